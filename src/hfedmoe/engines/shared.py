"""Pieces both engines share (in-process and Flower): per-client seeds, the round's result row
and what it keeps of each update, local-training settings, per-client validation, the pooled
client of the centralised bound."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hfedmoe.client import ClientUpdate, TrainSettings, evaluate
from hfedmoe.config import RunConfig
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.federation.data import FederationData
from hfedmoe.moe import MoEModel


@dataclass
class RoundResult:
    round: int
    row: dict[str, Any]
    #: Not filled by the engine: updates are folded into the aggregation as they arrive and
    #: dropped (the server holds O(1) updates). Kept for callers that build results themselves.
    updates: list[ClientUpdate] = field(default_factory=list)


@dataclass
class ClientSummary:
    """What the round's metrics row needs from one update, kept after the update is dropped."""

    client_id: int
    train_loss: float
    upload_bytes: int
    backward_flops: float
    flops: float  # forward + backward
    selected_counts: list
    trained: list
    usage: list
    num_examples: int
    peak_expert_state: list | None  # (L,) most experts holding grad/optimizer state at any step
    diagnostics: dict[str, float]  # the client's selection-diagnostic counters (diag_*)

    @classmethod
    def of(cls, upd: ClientUpdate) -> ClientSummary:
        return cls(upd.client_id, float(upd.metrics["train_loss"]), int(upd.upload_bytes()),
                   float(upd.metrics["backward_flops"]),
                   float(upd.metrics["forward_flops"] + upd.metrics["backward_flops"]), upd.selected_counts.tolist(),
                   upd.trained.int().tolist(), [[round(x, 5) for x in r] for r in upd.usage.tolist()],
                   int(upd.num_examples),
                   None if upd.peak_expert_state is None else upd.peak_expert_state.tolist(),
                   {k: v for k, v in upd.metrics.items() if k.startswith("diag_")})


def train_settings(cfg: RunConfig) -> TrainSettings:
    """The local-training settings of a run (the same on every engine)."""
    return TrainSettings(
        local_epochs=cfg.train.local_epochs,
        local_steps=cfg.train.local_steps,
        min_local_steps=cfg.train.min_local_steps,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        optimizer=cfg.train.optimizer,
        weight_decay=cfg.train.weight_decay,
        momentum=cfg.train.momentum,
        trainable=tuple(cfg.train.trainable),
        grad_mode=cfg.method.grad_mode,
        lam=cfg.method.lam,
        beta=cfg.method.beta,
        foreach=cfg.train.foreach,
        dispatch=cfg.train.dispatch,
        dtype=cfg.runtime.dtype,
        pooling=cfg.method.pooling,
        ib_scale=cfg.method.ib_scale,
        prox_mu=cfg.train.prox_mu,
        loss=cfg.train.loss,
    )


def client_val_accuracy(mm: MoEModel, fed: FederationData, cid: int, batch_size: int) -> float:
    """Accuracy of ``mm`` on client ``cid``'s validation split (NaN when it has none)."""
    return val_accuracy(mm, fed.tokens, fed.clients[cid].val_idx, batch_size)


def val_accuracy(mm: MoEModel, tokens: TokenizedTexts, val_idx: np.ndarray, batch_size: int) -> float:
    """Accuracy of ``mm`` on the examples ``val_idx`` of ``tokens`` (NaN when there are none)."""
    return evaluate(mm, tokens, val_idx, batch_size)["accuracy"] if len(val_idx) else float("nan")


def split_seconds(total: float, parts: tuple[float, float] | None) -> tuple[float, float]:
    """(compute, link) seconds summing to ``total``: the client's own split scaled (a straggler's
    extra wait or a deadline cut applies to both), or all compute when it sent nothing."""
    if not parts or sum(parts) <= 0:
        return (total, 0.0)
    f = total / sum(parts)
    return (parts[0] * f, parts[1] * f)


def span(rounds: list[int]) -> str:
    return f"{rounds[0]}..{rounds[-1]}" if len(rounds) > 1 else str(rounds[0])


def pool_clients(fed: FederationData, cfg: RunConfig) -> FederationData:
    """One client holding every client's training and validation data, with the profile of the
    most memory (the centralised upper bound: no privacy, no budget)."""
    from hfedmoe.core.budgets import DEVICE_PROFILES
    from hfedmoe.federation.data import ClientData

    profile = max(cfg.clients.profiles, key=lambda p: DEVICE_PROFILES[p].memory_gb)
    train = np.sort(np.concatenate([c.train_idx for c in fed.clients]))
    val = np.sort(np.concatenate([c.val_idx for c in fed.clients]))
    return FederationData(fed.dataset, fed.tokens, fed.test_idx, [ClientData(0, train, val, profile)],
                          public_idx=fed.public_idx, heldout=fed.heldout, layout=fed.layout)


#: Evaluation fields of the last metrics row copied into the export's ``hfedmoe_export.json``.
EXPORT_FIELDS = ("test_accuracy", "test_loss", "test_perplexity", "heldout_perplexity", "client_val_perplexity_mean")


def export_moe_adapters(mm: MoEModel, cfg: RunConfig, out_dir: Any, row: dict[str, Any]) -> Any:
    """``model.adapter = "moe"`` runs: the global MoE adapters (and the trained dense tensors, e.g.
    the head) in the layout of :mod:`hfedmoe.moe.adapter_export`, with the round and its
    evaluation in the config's ``info``. Called after the last round and by ``hfedmoe export``."""
    from hfedmoe.client.train import trainable_dense_names
    from hfedmoe.moe.adapter_export import save_moe_adapters

    info = {"round": int(row.get("round", 0)), "method": row.get("method"), "model": cfg.model.name,
            "seed": cfg.seed, "base": ("the run's dense base model: hfedmoe.federation.model.build_base_model(cfg.model, "
                                       "num_labels, cfg.seed) with cfg from the run's config.toml"
                                       if cfg.model.name != "hf" else cfg.model.path),
            **{k: row[k] for k in EXPORT_FIELDS if row.get(k) is not None}}
    return save_moe_adapters(mm, out_dir, trainable_dense_names(mm, cfg.train.trainable), info)


def export_lora_adapter(mm: MoEModel, cfg: RunConfig, out_dir: Any, row: dict[str, Any],
                        base_model_name_or_path: str | None = None) -> Any:
    """LoRA runs: the global adapter as a PEFT directory ``out_dir`` (``PeftModel.from_pretrained(
    base, out_dir)`` reproduces ``row``'s evaluation), with the round and that evaluation in
    ``hfedmoe_export.json``. Called by both engines after the last round and by ``hfedmoe export``."""
    from hfedmoe.moe.lora_export import export_peft

    info = {"round": int(row.get("round", 0)), "method": row.get("method"), "model": cfg.model.name,
            "seed": cfg.seed, "lora_r": cfg.model.lora_r, "lora_alpha": cfg.model.lora_alpha,
            "base": ("the run's base model: hfedmoe.federation.model.build_model(cfg.model, num_labels, cfg.seed) "
                     "with cfg from the run's config.toml" if cfg.model.name != "hf" else cfg.model.path),
            **{k: row[k] for k in EXPORT_FIELDS if row.get(k) is not None}}
    return export_peft(mm, out_dir, cfg.train.trainable,
                       base_model_name_or_path=base_model_name_or_path or cfg.model.path or None, info=info,
                       task_type="CAUSAL_LM" if cfg.model.task == "causal-lm" else None)


def global_eval_row(mm: MoEModel, fed: FederationData, cfg: RunConfig,
                    client_val: Callable[[], list[float]] | None, val_sizes: list[int] | None, *,
                    client_ppl: Callable[[], list[float]]) -> dict[str, Any]:
    """The global model's evaluation row: test accuracy, loss, macro-F1 and per-class figures
    (a causal LM: perplexities, every client's validation split included); with ``client_val``
    (the engine's per-client validation accuracies, NaN = no split) also their min and mean and,
    given ``val_sizes`` (C,) the clients' validation-split sizes, the pooled accuracy over all
    validation examples (under label skew the plain mean favours a model that predicts the
    classes most clients hold; the pooled one weighs each example once, like the test set).
    A causal LM takes the clients' validation perplexities from ``client_ppl`` (the engine's: the
    Flower engine asks the nodes)."""
    bs = cfg.train.eval_batch_size
    if cfg.model.task == "causal-lm":
        from hfedmoe.client.tasks import lm_eval_row

        return lm_eval_row(mm, fed.tokens, fed.test_idx, client_ppl, fed.heldout, bs)
    from hfedmoe.report.classes import class_metrics

    test = evaluate(mm, fed.tokens, fed.test_idx, bs)
    classes = class_metrics(test["confusion"])
    row: dict[str, Any] = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_macro_f1": classes["macro_f1"],
        "test_class_accuracy": classes["class_accuracy"],
        "test_pred_share": classes["pred_share"],
    }
    if client_val is None:
        return row
    per_client = client_val()
    finite = [a for a in per_client if a == a]
    row.update({
        "client_val_accuracy": per_client,
        "client_val_accuracy_min": min(finite) if finite else None,
        "client_val_accuracy_mean": float(np.mean(finite)) if finite else None,
    })
    if val_sizes is not None:
        pairs = [(n, a) for n, a in zip(val_sizes, per_client) if a == a and n > 0]
        total = sum(n for n, _ in pairs)
        row["client_val_accuracy_pooled"] = sum(n * a for n, a in pairs) / total if total else None
    return row
