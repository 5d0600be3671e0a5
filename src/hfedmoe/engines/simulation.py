"""In-process simulation engine: rounds of sample → train each client in turn on ONE shared model
object → aggregate → evaluate → checkpoint.

Memory does not grow with the number of clients: the server keeps one copy of the global state,
each client loads it into the shared model, trains, and hands back only what it trained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hfedmoe.federation.budgeting import ClientBudget, compute_budgets, download_bytes, transfer_seconds
from hfedmoe.client import ClientUpdate, TrainSettings, evaluate, train_client
from hfedmoe.config import RunConfig, dump_config
from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint, prune_checkpoints, save_checkpoint
from hfedmoe.federation.data import FederationData, build_federation, load_run_dataset
from hfedmoe.methods import make_method
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.federation.model import build_model
from hfedmoe.moe import MoEModel, wrap
from hfedmoe.report.metrics import append_metrics, read_metrics, truncate_metrics

log = logging.getLogger(__name__)

Event = dict[str, Any]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, round, client): independent streams, reproducible."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class RoundResult:
    round: int
    row: dict[str, Any]
    updates: list[ClientUpdate] = field(default_factory=list)


class Simulation:
    """One federated run of one method, writing everything into ``out_dir``."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: Path,
        *,
        method: Method | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.on_event = on_event or (lambda e: None)
        self.method = method or make_method(cfg.method)
        self.method.seed = cfg.seed
        dataset = load_run_dataset(cfg)
        model, tokenizer, self.model_description = build_model(cfg.model, dataset.num_labels, cfg.seed)
        self.mm: MoEModel = wrap(model)
        self.fed: FederationData = build_federation(cfg, tokenizer, dataset)
        num_federated = len(self.fed.clients)
        if self.method.pools_data:
            self.fed = pool_clients(self.fed, cfg)
        self.budgets: list[ClientBudget] = compute_budgets(cfg, self.mm, self.fed)
        self.settings = TrainSettings(
            local_epochs=cfg.train.local_epochs,
            local_steps=cfg.train.local_steps,
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr,
            optimizer=cfg.train.optimizer,
            weight_decay=cfg.train.weight_decay,
            momentum=cfg.train.momentum,
            trainable=tuple(cfg.train.trainable),
            grad_mode=cfg.method.grad_mode,
            lam=cfg.method.lam,
        )
        if self.method.pools_data and cfg.train.local_steps:
            # the pooled client sees as many examples per round as all sampled clients together
            self.settings.local_steps = cfg.train.local_steps * len(self._sample(round_idx=1, n=num_federated))
        self.round = 0
        self.sim_time_s = 0.0
        self.wall_time_s = 0.0

    # --- paths -----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def ckpt_root(self) -> Path:
        return self.out_dir / "checkpoints"

    # --- state -----------------------------------------------------------------------------
    def server_state(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "method": self.method.name,
            "method_state": self.method.state_dict(),
            "sim_time_s": self.sim_time_s,
            "wall_time_s": self.wall_time_s,
        }

    def restore(self) -> int:
        """Load the last complete checkpoint (if any); return its round."""
        rounds = complete_rounds(self.ckpt_root)
        if not rounds:
            truncate_metrics(self.metrics_path, 0)
            return 0
        last = rounds[-1]
        tensors, state = load_checkpoint(self.ckpt_root, last)
        self.mm.model.load_state_dict(tensors, strict=True)
        self.method.load_state_dict(state["method_state"])
        self.round = int(state["round"])
        self.sim_time_s = float(state["sim_time_s"])
        self.wall_time_s = float(state["wall_time_s"])
        truncate_metrics(self.metrics_path, self.round)
        log.info("resumed from round %d", self.round)
        return self.round

    # --- rounds ----------------------------------------------------------------------------
    def sample_clients(self, round_idx: int) -> list[int]:
        return self._sample(round_idx, len(self.fed.clients))

    def _sample(self, round_idx: int, n: int) -> list[int]:
        k = self.cfg.federation.clients_per_round
        count = max(1, round(k * n)) if k <= 1 else min(int(k), n)
        if count >= n:
            return list(range(n))
        rng = np.random.default_rng(derive_seed(self.cfg.seed, round_idx, 7))
        return sorted(rng.choice(n, size=count, replace=False).tolist())

    def evaluate_global(self) -> dict[str, Any]:
        bs = self.cfg.train.eval_batch_size
        if self.cfg.model.task == "causal-lm":
            from hfedmoe.client.tasks import lm_eval_row

            return lm_eval_row(self.mm, self.fed.tokens, self.fed.test_idx,
                               [c.val_idx for c in self.fed.clients], self.fed.heldout, bs)
        test = evaluate(self.mm, self.fed.tokens, self.fed.test_idx, bs)
        per_client = [
            evaluate(self.mm, self.fed.tokens, c.val_idx, bs)["accuracy"] if len(c.val_idx) else float("nan")
            for c in self.fed.clients
        ]
        finite = [a for a in per_client if a == a]
        return {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "client_val_accuracy": per_client,
            "client_val_accuracy_min": min(finite) if finite else None,
            "client_val_accuracy_mean": float(np.mean(finite)) if finite else None,
        }

    def run_round(self, round_idx: int) -> RoundResult:
        t0 = time.perf_counter()
        mm, cfg = self.mm, self.cfg
        sampled = self.sample_clients(round_idx)
        global_state = {k: v.detach().clone() for k, v in mm.model.state_dict().items()}
        full_down = download_bytes(mm)
        down_total = 0
        updates: list[ClientUpdate] = []
        failed: list[int] = []
        dropped: list[int] = []
        client_times: dict[int, float] = {}
        training: list[ClientInfo] = []
        for cid in sampled:
            info = self.budgets[cid]
            client = self.fed.clients[cid]
            if not self.method.respects_budget and not info.fits_full:
                if self.method.drops_unfit:
                    dropped.append(cid)
                    continue
                failed.append(cid)
                self.on_event({"kind": "client_failed", "round": round_idx, "client": cid,
                               "reason": "training state does not fit memory"})
                continue
            training.append(ClientInfo(cid, info.budget, len(client.train_idx), client.profile))
        self.method.begin_round(mm, training, round_idx)
        for cinfo in training:
            cid = cinfo.client_id
            info = self.budgets[cid]
            client = self.fed.clients[cid]
            mm.model.load_state_dict(global_state)
            plan = self.method.plan(mm, cinfo, round_idx)
            down = self.method.download_bytes(mm, cinfo, full_down)
            down_total += down
            self.on_event({"kind": "client_start", "round": round_idx, "client": cid})
            upd = train_client(
                mm, cid, self.fed.tokens, client.train_idx, plan, self.settings,
                seed=derive_seed(cfg.seed, round_idx, cid),
                progress=lambda p, r=round_idx: self.on_event({"kind": "step", "round": r, **p}),
            )
            compute_s = (upd.metrics["forward_flops"] + upd.metrics["backward_flops"]) / info.flops_per_s
            client_times[cid] = compute_s + transfer_seconds(info, upd.upload_bytes(), down)
            updates.append(upd)
        mm.model.load_state_dict(global_state)
        del global_state
        agg_metrics = self.method.aggregate(mm, updates, round_idx) if updates else {}
        round_sim = max(client_times.values()) if client_times else 0.0
        self.sim_time_s += round_sim
        row: dict[str, Any] = {
            "round": round_idx,
            "method": self.method.name,
            "train_loss": float(np.mean([u.metrics["train_loss"] for u in updates])) if updates else None,
            "sim_time_s": self.sim_time_s,
            "round_sim_time_s": round_sim,
            "upload_bytes": int(sum(u.upload_bytes() for u in updates)),
            "download_bytes": int(down_total),
            "failed_clients": failed,
            "dropped_clients": dropped,
            "sampled_clients": sampled,
            "backward_flops_per_client": float(np.mean([u.metrics["backward_flops"] for u in updates])) if updates else 0.0,
            "client_selected_experts": {
                str(u.client_id): u.selected_counts.tolist() for u in updates
            },
            "client_trained": {str(u.client_id): u.trained.int().tolist() for u in updates},
            "client_usage": {str(u.client_id): [[round(x, 5) for x in r] for r in u.usage.tolist()] for u in updates},
            "client_train_loss": {str(u.client_id): u.metrics["train_loss"] for u in updates},
            **agg_metrics,
        }
        if round_idx % cfg.federation.eval_every == 0 or round_idx == cfg.federation.rounds:
            row.update(self.evaluate_global())
        else:
            row.update({"test_accuracy": None, "test_loss": None})
        self.wall_time_s += time.perf_counter() - t0
        row["wall_time_s"] = self.wall_time_s
        return RoundResult(round_idx, row, updates)

    def run(self, rounds: int | None = None) -> list[dict[str, Any]]:
        """Run (or continue) up to ``rounds`` rounds; returns all metric rows."""
        cfg = self.cfg
        total = rounds if rounds is not None else cfg.federation.rounds
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out_dir / "config.toml")
        if self.round == 0 and not read_metrics(self.metrics_path):
            t0 = time.perf_counter()
            row = {"round": 0, "method": self.method.name, "train_loss": None, "sim_time_s": 0.0,
                   "upload_bytes": 0, "download_bytes": 0, "failed_clients": [], **self.evaluate_global()}
            self.wall_time_s += time.perf_counter() - t0
            row["wall_time_s"] = self.wall_time_s
            append_metrics(self.metrics_path, row)
            self.on_event({"kind": "round_end", "round": 0, "rounds": total, "row": row})
        while self.round < total:
            r = self.round + 1
            self.on_event({"kind": "round_start", "round": r, "rounds": total})
            result = self.run_round(r)
            self.round = r
            # Metrics first, then the checkpoint: a kill in between re-runs round r on resume
            # (rows after the resumed checkpoint are dropped), never loses its row.
            append_metrics(self.metrics_path, result.row)
            if r % cfg.federation.checkpoint_every == 0 or r == total:
                save_checkpoint(self.ckpt_root, r, self.mm.model.state_dict(), self.server_state())
                prune_checkpoints(self.ckpt_root, cfg.federation.keep_checkpoints)
            self.on_event({"kind": "round_end", "round": r, "rounds": total, "row": result.row})
        return read_metrics(self.metrics_path)


def pool_clients(fed: FederationData, cfg: RunConfig) -> FederationData:
    """One client holding every client's training and validation data, with the profile of the
    most memory (the centralised upper bound: no privacy, no budget)."""
    from hfedmoe.core.budgets import DEVICE_PROFILES
    from hfedmoe.federation.data import ClientData

    profile = max(cfg.clients.profiles, key=lambda p: DEVICE_PROFILES[p].memory_gb)
    train = np.sort(np.concatenate([c.train_idx for c in fed.clients]))
    val = np.sort(np.concatenate([c.val_idx for c in fed.clients]))
    return FederationData(fed.dataset, fed.tokens, fed.test_idx, [ClientData(0, train, val, profile)], fed.heldout)
