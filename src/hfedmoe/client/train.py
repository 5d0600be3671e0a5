"""Local fine-tuning of one client: per batch, capture routing, score, select within the budget,
backward through the selected experts only; track usage, importance and what was trained.

No engine imports: both engines call :func:`train_client` on a model that already holds the global
weights, and ship the returned :class:`ClientUpdate` to the server.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import torch

from hfedmoe.client.flops import flop_model
from hfedmoe.client.parts import dense_names_for
from hfedmoe.core.flops import BatchShape
from hfedmoe.core.usage import UsageAccumulator
from hfedmoe.data.batches import TokenizedTexts, iter_batches, num_batches
from hfedmoe.moe import MoEModel
from hfedmoe.moe.contexts import routing_scores

log = logging.getLogger(__name__)

# A selector picks the trainable experts of one layer from that layer's routing of this batch.
Selector = Callable[[int, object], Sequence[int]]


@dataclass
class TrainPlan:
    """What a method asks of one client for one round.

    Exactly one of ``selector`` (per batch, per layer, inside the forward), ``batch_subsets``
    (per batch, from a no-grad pre-pass over all layers: model-scope budgets) or
    ``static_subsets`` (fixed for the round; None per layer = all experts) is used.
    ``restrict`` limits routing (restrict mode / sub-MoE baselines).
    """

    selector: Selector | None = None
    batch_subsets: Callable[[object], list[Sequence[int]]] | None = None
    static_subsets: list[Sequence[int] | None] | None = None
    restrict: list[Sequence[int] | None] | None = None
    train_routers: bool = True


@dataclass
class TrainSettings:
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 16
    lr: float = 5e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9
    trainable: tuple[str, ...] = ("experts", "routers", "head")
    grad_mode: str = "no_grad"
    lam: float = 0.5


@dataclass
class ClientUpdate:
    """Everything the server needs from one client after one round (design.md, "Interfaces")."""

    client_id: int
    num_examples: int
    experts: dict[tuple[int, int], dict[str, torch.Tensor]]  # (layer, idx) -> trained slices
    routers: dict[int, dict[str, torch.Tensor]]  # layer -> router tensors
    dense: dict[str, torch.Tensor]  # trained dense params (head, attention, ...)
    usage: torch.Tensor  # (L, E) Eq. 16 over the client's tokens
    importance: torch.Tensor  # (L, E) s^c(e): mean per-batch importance
    trained: torch.Tensor  # (L, E) bool: updated in at least one step
    selected_counts: torch.Tensor  # (L, E) int: batches in which each expert was selected
    metrics: dict[str, float] = field(default_factory=dict)

    def upload_bytes(self) -> int:
        """Bytes of the tensors this update carries (experts, routers, dense, statistics)."""
        n = sum(t.numel() * t.element_size() for d in self.experts.values() for t in d.values())
        n += sum(t.numel() * t.element_size() for d in self.routers.values() for t in d.values())
        n += sum(t.numel() * t.element_size() for t in self.dense.values())
        n += 2 * self.usage.numel() * 4 + self.trained.numel()
        return int(n)


def _optimizer(params: list[torch.Tensor], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def trainable_dense_names(mm: MoEModel, parts: Sequence[str]) -> list[str]:
    """Names of the dense parameters trained under ``parts``."""
    return dense_names_for(list(mm.dense_named_parameters()), list(parts))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device`` (the same dict on the CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def flops_per_token_dense(mm: MoEModel) -> float:
    """Forward FLOPs per token of everything but the routed experts and the embeddings (2 per MAC).
    Superseded by :func:`hfedmoe.client.flops.flop_model` (kept for callers)."""
    n = 0
    for name, p in mm.dense_named_parameters().items():
        if p.dim() >= 2 and "embed" not in name:
            n += p.numel()
    n += sum(p.numel() for p in mm.router_parameters())
    return 2.0 * n


def expert_numel(mm: MoEModel) -> int:
    return sum(t.numel() for t in mm.get_expert(0, 0).values())


def train_client(
    mm: MoEModel,
    client_id: int,
    data: TokenizedTexts,
    indices: np.ndarray,
    plan: TrainPlan,
    settings: TrainSettings,
    *,
    seed: int,
    progress: Callable[[dict], None] | None = None,
) -> ClientUpdate:
    """Train ``mm.model`` (holding the global weights) on ``indices`` of ``data`` and return the update.

    Randomness (shuffling, dropout) comes only from ``seed``, so a resumed run repeats exactly.
    """
    model = mm.model
    L, E = mm.num_layers, mm.num_experts
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()

    parts = tuple(settings.trainable)
    dense_names = trainable_dense_names(mm, parts)
    dense_params = mm.dense_named_parameters()
    expert_leaves = mm.expert_leaves() if "experts" in parts else {}
    train_routers = "routers" in parts and plan.train_routers

    # requires_grad: exactly the trainable dense params and routers; experts via train_only.
    saved_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for n in dense_names:
        dense_params[n].requires_grad_(True)
    for p in mm.router_parameters():
        p.requires_grad_(train_routers)

    params: list[torch.Tensor] = [dense_params[n] for n in dense_names]
    if train_routers:
        params += list(mm.router_parameters())
    for leaves in expert_leaves.values():
        params += list(leaves)
    opt = _optimizer(params, settings)

    steps_per_epoch = num_batches(len(indices), settings.batch_size)
    total_steps = settings.local_steps or settings.local_epochs * steps_per_epoch

    usage_acc = [UsageAccumulator(E) for _ in range(L)]  # Eq. 16 over all the client's tokens
    imp_sum = torch.zeros(L, E, dtype=torch.float64)
    trained = torch.zeros(L, E, dtype=torch.bool)
    selected_counts = torch.zeros(L, E, dtype=torch.long)
    num_batches_done = 0
    loss_sum = 0.0
    flops = flop_model(mm, parts, train_routers=train_routers)  # the one FLOP model (core/flops.py)
    fwd_flops = bwd_flops = 0.0

    step = 0
    try:
        while step < total_steps:
            for batch in iter_batches(data, indices, settings.batch_size, shuffle=True, rng=rng):
                if step >= total_steps:
                    break
                batch = to_device(batch, device)
                num_seq, padded_len = (int(x) for x in batch["attention_mask"].shape)
                subsets = plan.static_subsets
                if plan.batch_subsets is not None:
                    with torch.no_grad(), mm.capture_routing(batch["attention_mask"]) as pre:
                        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    subsets = plan.batch_subsets(pre)
                    pre_pairs = [int(pre.layer(l).token_mask.sum()) * pre.layer(l).topk_idx.shape[1] for l in range(L)]
                    fwd_flops += flops.forward(BatchShape(num_seq, padded_len, pre_pairs, [0] * L))
                with ExitStack() as stack:
                    if plan.restrict is not None:
                        stack.enter_context(mm.restrict_routing(plan.restrict))
                    cap = stack.enter_context(mm.capture_routing(batch["attention_mask"]))
                    if "experts" in parts:
                        if plan.selector is not None:
                            ctx = stack.enter_context(mm.train_only(plan.selector, mode=settings.grad_mode))
                        else:
                            ctx = stack.enter_context(mm.train_only(subsets, mode=settings.grad_mode))
                    else:
                        ctx = stack.enter_context(mm.train_only([[] for _ in range(L)], mode=settings.grad_mode))
                    out = model(**batch)
                    loss = out.loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    chosen = [ctx.selected[l] for l in range(L)]
                loss_sum += float(loss.detach())
                expert_pairs, trained_pairs = [], []
                for l in range(L):
                    r = cap.layer(l)
                    usage_acc[l].update(r.gate_probs, r.token_mask)
                    # s_b of this batch: reused from the selector when it scored this layer already
                    imp_sum[l] += routing_scores(r, settings.lam).double().cpu()
                    topk = r.topk_idx[r.token_mask].cpu()  # (T_real, k)
                    sel = torch.as_tensor(chosen[l], dtype=torch.long)
                    # An expert counts as trained only if a token reached it (else it got no gradient).
                    sel = sel[torch.isin(sel, topk.unique())] if sel.numel() else sel
                    if "experts" in parts and sel.numel():
                        trained[l, sel] = True
                        selected_counts[l, sel] += 1
                    # FLOPs: real token-expert pairs of this batch, and those that went through backward.
                    expert_pairs.append(topk.numel())
                    trained_pairs.append(int(torch.isin(topk, sel).sum()) if sel.numel() else 0)
                f, b = flops.step(BatchShape(num_seq, padded_len, expert_pairs, trained_pairs))
                fwd_flops += f
                bwd_flops += b
                num_batches_done += 1
                step += 1
                if progress is not None:
                    progress({"client": client_id, "step": step, "steps": total_steps, "loss": loss.item()})
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved_flags[n])

    usage = torch.stack([acc.usage() for acc in usage_acc]).float()  # (L, E) token-weighted over batches
    num_tokens = usage_acc[0].num_tokens
    importance = (imp_sum / max(num_batches_done, 1)).float()  # (L, E)
    experts = {}
    for l, e in trained.nonzero().tolist():
        experts[(l, e)] = mm.get_expert(l, e)
    routers = {l: mm.router_state(l) for l in range(L)} if train_routers else {}
    dense = {n: dense_params[n].detach().clone() for n in dense_names}
    metrics = {
        "train_loss": loss_sum / max(num_batches_done, 1),
        "steps": float(num_batches_done),
        "tokens": float(num_tokens),
        "forward_flops": fwd_flops,
        "backward_flops": bwd_flops,
    }
    if not math.isfinite(metrics["train_loss"]):
        log.warning("client %d: non-finite training loss", client_id)
    return ClientUpdate(
        client_id=client_id,
        num_examples=int(len(indices)),
        experts=experts,
        routers=routers,
        dense=dense,
        usage=usage,
        importance=importance,
        trained=trained,
        selected_counts=selected_counts,
        metrics=metrics,
    )


def length_sorted(data: TokenizedTexts, indices: np.ndarray) -> np.ndarray:
    """``indices`` ordered by token length (stable), so that each batch pads to similar lengths."""
    indices = np.asarray(indices)
    lengths = np.fromiter((len(data.input_ids[i]) for i in indices), dtype=np.int64, count=len(indices))
    return indices[np.argsort(lengths, kind="stable")]


@torch.no_grad()
def evaluate(mm: MoEModel, data: TokenizedTexts, indices: np.ndarray, batch_size: int) -> dict[str, float]:
    """Accuracy and mean loss of ``mm.model`` on ``indices``.

    Batches are cut from the examples sorted by length: every example's prediction is independent
    of its batch mates, and similar lengths cut the padding (measured on the VADER test split:
    18,000 pad tokens for 9,196 real ones in index order)."""
    model = mm.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    n = 0
    confusion = None  # (K, K) counts: rows = true class, columns = predicted class
    for batch in iter_batches(data, length_sorted(data, indices), batch_size, shuffle=False):
        batch = to_device(batch, device)
        out = model(**batch)
        b = batch["labels"].shape[0]
        loss_sum += float(out.loss) * b
        pred = out.logits.argmax(-1)  # (B,)
        correct += int((pred == batch["labels"]).sum())  # one sync per batch
        num_labels = out.logits.shape[-1]
        if confusion is None:
            confusion = torch.zeros(num_labels, num_labels, dtype=torch.long, device=pred.device)
        confusion += torch.bincount(batch["labels"] * num_labels + pred, minlength=num_labels**2).view(
            num_labels, num_labels)
        n += b
    model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1), "num_examples": float(n),
            "confusion": [] if confusion is None else confusion.cpu().tolist()}
