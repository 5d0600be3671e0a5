"""In-process simulation engine: rounds of sample → train each client in turn on ONE shared model
object → aggregate → evaluate → checkpoint.

Memory does not grow with the number of clients: the server keeps one copy of the global state,
each client loads it into the shared model, trains, and hands back only what it trained.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hfedmoe.federation.budgeting import ClientBudget, compute_budgets, download_bytes, transfer_seconds
from hfedmoe.client import ClientUpdate, train_client
from hfedmoe.config import RunConfig, dump_config
from hfedmoe.client.train import trainable_dense_names
from hfedmoe.engines.best import BestModel, load_best
from hfedmoe.engines.guard import RoundGuard
from hfedmoe.engines.resume import check_resume_config, config_record
from hfedmoe.engines.checkpoint import (
    CheckpointError, check_checkpoint, complete_rounds, load_checkpoint, load_server_opt, prune_checkpoints, save_checkpoint, set_aside,
)
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.data import FederationData, build_federation, load_run_dataset
from hfedmoe.methods import make_method
from hfedmoe.methods.base import Aggregation, ClientInfo, Method, open_aggregation
from hfedmoe.methods.server_opt import ServerOptimizer, server_opt_settings
from hfedmoe.federation.model import build_model, wrap_for_run
from hfedmoe.federation.runtime import setup_model, torch_threads
from hfedmoe.federation.warmup import mean_top_prob, warmup_head, warmup_routers
from hfedmoe.client.diagnostics import rates as selection_rates
from hfedmoe.methods._common import per_layer_budget, seed_of
from hfedmoe.moe import MoEModel
from hfedmoe.report.metrics import append_metrics, read_metrics, truncate_metrics
from hfedmoe.engines.shared import (
    ClientSummary, RoundResult, client_val_accuracy, export_lora_adapter, export_moe_adapters, global_eval_row, pool_clients,
    span, split_seconds, train_settings,
)

log = logging.getLogger(__name__)

Event = dict[str, Any]


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
        num_labels, federation = self.data_source(cfg)
        model, tokenizer, self.model_description = build_model(cfg.model, num_labels, cfg.seed)
        model, self.device = setup_model(model, cfg)  # the same as the Flower ClientApp's
        self.mm: MoEModel = wrap_for_run(model, cfg.model)
        self.fed: FederationData = federation(tokenizer)
        # Router warm-up on the disjoint public split, before federation (deterministic in the
        # seed, so a resumed run rebuilds the same starting point before loading its checkpoint).
        self.warmup_metrics: dict[str, float] = {}
        if cfg.model.router_warmup_steps > 0:
            self.warmup_metrics = warmup_routers(
                self.mm, self.fed.tokens, self.fed.public_idx, steps=cfg.model.router_warmup_steps,
                lr=cfg.model.router_warmup_lr, batch_size=cfg.train.batch_size, seed=seed_of(cfg.seed, 5),
            )
        if cfg.model.head_warmup_steps > 0:  # after the routers: the head learns the routed features
            self.warmup_metrics.update(warmup_head(
                self.mm, self.fed.tokens, self.fed.public_idx, steps=cfg.model.head_warmup_steps,
                lr=cfg.model.head_warmup_lr, batch_size=cfg.train.batch_size, seed=seed_of(cfg.seed, 6),
            ))
        num_federated = len(self.fed.clients)
        if self.method.pools_data:
            self.fed = pool_clients(self.fed, cfg)
        self.budgets: list[ClientBudget] = compute_budgets(cfg, self.mm, self.fed)
        self.settings = train_settings(cfg)
        if self.method.pools_data and cfg.train.local_steps:
            # the pooled client sees as many examples per round as all sampled clients together
            self.settings.local_steps = cfg.train.local_steps * len(self._sample(round_idx=1, n=num_federated))
        self.guard = RoundGuard(cfg, self.method, self.settings,
                                trainable_dense_names(self.mm, list(self.settings.trainable)))
        self.server_opt = ServerOptimizer(server_opt_settings(cfg))
        self.round = 0
        self.sim_time_s = 0.0
        self.sim_compute_s = 0.0  # the parts of sim_time_s spent computing and on the links
        self.sim_comm_s = 0.0
        self.wall_time_s = 0.0
        # federation.select_model = "best-val": the round the clients' validation splits rate best
        self.best = BestModel(self.ckpt_root, cfg.model.task) if cfg.federation.select_model == "best-val" else None

    def data_source(self, cfg: RunConfig) -> tuple[int, Callable[[Any], FederationData]]:
        """(number of classes, tokenizer -> the run's federation): here the whole data, partitioned."""
        dataset = load_run_dataset(cfg)
        return dataset.num_labels, lambda tokenizer: build_federation(cfg, tokenizer, dataset)

    def num_train(self, cid: int) -> int:  # training examples of client cid (its update's weight)
        return len(self.fed.clients[cid].train_idx)

    def num_val(self, cid: int) -> int:  # validation examples of client cid
        return len(self.fed.clients[cid].val_idx)

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
            "sim_compute_s": self.sim_compute_s,
            "sim_comm_s": self.sim_comm_s,
            "wall_time_s": self.wall_time_s,
            "guard": self.guard.state_dict(),
            **config_record(self.cfg),
        }

    def restore(self, discard_invalid: bool = False, allow_change: Collection[str] = ()) -> int:
        """Load the newest complete checkpoint (checksums, keyed ones too; tensors of this model;
        state of this method; the config it was made with, see engines/resume.py); return its round.

        Raises HFedMoEError, before anything is written, when the newest checkpoint does not verify
        (unless ``discard_invalid``: it is renamed ``round_<N>.invalid``, the fallback logged and kept
        in ``restore_notes``), when the config differs in a field not in ``allow_change``, or when
        metrics.jsonl lacks rows up to the checkpoint. Rows after the resumed round are rewritten."""
        self.restore_notes: list[str] = []
        rows = read_metrics(self.metrics_path)
        for r in reversed(complete_rounds(self.ckpt_root)):
            try:
                tensors, state = load_checkpoint(self.ckpt_root, r)
                check_resume_config(state, self.cfg, allow_change, str(self.ckpt_root / f"round_{r}"))
                check_checkpoint(self.mm.model.state_dict(), self.method.name, tensors, state)
                opt_state = load_server_opt(self.ckpt_root, r)
            except CheckpointError as exc:
                if not discard_invalid:
                    raise HFedMoEError(
                        f"checkpoint of round {r} is not usable ({exc}); nothing was changed (resume with "
                        "--discard-invalid to set it aside and continue from the newest valid checkpoint)") from None
                moved = set_aside(self.ckpt_root, r)
                self.restore_notes.append(f"checkpoint of round {r} is not usable ({exc}); moved to {moved.name}")
                log.warning("%s", self.restore_notes[-1])
                continue
            missing = sorted(set(range(r + 1)) - {int(x["round"]) for x in rows})
            if missing:
                raise HFedMoEError(
                    f"{self.metrics_path}: expected metric rows for rounds 0..{r}, rows {span(missing)} are missing; "
                    "resuming would rewrite the report with less (restore the file, or start over with --overwrite)")
            self.mm.model.load_state_dict(tensors, strict=True)
            self.method.load_state_dict(state["method_state"])
            self.server_opt.load_state_tensors(opt_state)
            self.guard.load_state_dict(state.get("guard", {}))
            self.round = int(state["round"])
            self.sim_time_s = float(state["sim_time_s"])
            self.sim_compute_s = float(state.get("sim_compute_s", 0.0))
            self.sim_comm_s = float(state.get("sim_comm_s", 0.0))
            self.wall_time_s = float(state["wall_time_s"])
            truncate_metrics(self.metrics_path, self.round)
            self._restore_best()
            if self.restore_notes:
                self.restore_notes.append(f"resuming from round {self.round}, the newest valid checkpoint")
            log.info("resumed from round %d", self.round)
            return self.round
        if self.restore_notes:
            self.restore_notes.append("no valid checkpoint left: starting again from round 0")
        truncate_metrics(self.metrics_path, 0)
        self._restore_best()
        return 0

    def _restore_best(self) -> None:
        if self.best is not None and (note := self.best.restore(
                read_metrics(self.metrics_path), self.round, self.mm.model.state_dict())):
            self.restore_notes.append(note)

    # --- rounds ----------------------------------------------------------------------------
    def sample_clients(self, round_idx: int) -> list[int]:
        return self._sample(round_idx, len(self.fed.clients))

    def _sample(self, round_idx: int, n: int) -> list[int]:
        k = self.cfg.federation.clients_per_round
        count = max(1, round(k * n)) if k <= 1 else min(int(k), n)
        if count >= n:
            return list(range(n))
        rng = np.random.default_rng(seed_of(self.cfg.seed, round_idx, 7))
        return sorted(rng.choice(n, size=count, replace=False).tolist())

    def evaluate_global(self, clients: bool = True) -> dict[str, Any]:
        """Test accuracy and loss; with ``clients`` also every client's validation accuracy."""
        return global_eval_row(self.mm, self.fed, self.cfg, self.client_val_accuracies if clients else None,
                               [self.num_val(c) for c in range(len(self.fed.clients))],
                               client_ppl=self.client_val_perplexities)

    def client_val_accuracies(self) -> list[float]:
        """Accuracy of the global model on each client's validation split (NaN: no split)."""
        bs = self.cfg.train.eval_batch_size
        return [client_val_accuracy(self.mm, self.fed, c.client_id, bs) for c in self.fed.clients]

    def client_val_perplexities(self) -> list[float]:
        """Causal LM: perplexity of the global model on each client's validation split (NaN: no split)."""
        from hfedmoe.client.tasks import client_val_perplexities

        val = [c.val_idx for c in self.fed.clients]
        return client_val_perplexities(self.mm, self.fed.tokens, val, self.cfg.train.eval_batch_size)

    def run_round(self, round_idx: int) -> RoundResult:
        t0 = time.perf_counter()
        sampled, training, failed, dropped = self.plan_round(round_idx)
        aggregation = self.open_round_aggregation(round_idx)
        summaries, client_times, down_total, faulted = self.train_clients(round_idx, training, aggregation)
        agg_metrics = aggregation.finish() if summaries else {}
        return self.finish_round(round_idx, t0, sampled, summaries, client_times, down_total,
                                 failed + faulted, dropped, agg_metrics)

    def open_round_aggregation(self, round_idx: int) -> Aggregation:
        """The round's aggregation on every engine: the method's, then the server optimizer's step."""
        return self.server_opt.wrap(open_aggregation(self.method, self.mm, round_idx), self.mm)

    def receive(self, aggregation: Aggregation, update: ClientUpdate) -> None:
        """The one place where the server folds an accepted update into the round's running sums,
        on every engine (the round guard has validated it before)."""
        aggregation.add(update)

    def plan_round(self, round_idx: int) -> tuple[list[int], list[ClientInfo], list[int], list[int]]:
        """Sample the round's clients, set aside those whose training state does not fit (failed, or
        dropped by FedAvg-drop), and let the method make its joint decisions (``begin_round``).
        Shared by both engines. Returns (sampled, training, failed, dropped)."""
        sampled = self.sample_clients(round_idx)
        failed: list[int] = []
        dropped: list[int] = []
        training: list[ClientInfo] = []
        for cid in sampled:
            info = self.budgets[cid]
            if not self.method.respects_budget and not info.fits_full:
                if self.method.drops_unfit:
                    dropped.append(cid)
                    continue
                failed.append(cid)
                self.on_event({"kind": "client_failed", "round": round_idx, "client": cid,
                               "reason": "training state does not fit memory"})
                continue
            training.append(ClientInfo(cid, info.budget, self.num_train(cid), self.fed.clients[cid].profile))
        self.method.begin_round(self.mm, training, round_idx)
        return sampled, training, failed, dropped

    def make_plan(self, cinfo: ClientInfo, round_idx: int):
        """The method's plan for one client (model holding the global weights), with the per-layer
        budget the selection diagnostics compare against. Shared by both engines."""
        mm = self.mm
        plan = self.method.plan(mm, cinfo, round_idx)
        if plan.budget is None:
            plan.budget = min(mm.num_experts, per_layer_budget(cinfo.budget, self.cfg.method.budget_scope, mm.num_layers))
        return plan

    def client_seed(self, round_idx: int, cid: int) -> int:
        """The training seed of client ``cid`` in round ``round_idx`` (the same on every engine)."""
        return seed_of(self.cfg.seed, round_idx, cid)

    def client_sim_seconds(self, cid: int, upd: ClientUpdate, down: int) -> tuple[float, float]:
        """Simulated (compute, link) seconds of one client's round: its FLOPs (one FLOP count for
        every method: the cost model's, core/flops.py) / its FLOP/s, and bytes / its bandwidth."""
        info = self.budgets[cid]
        compute_s = (upd.metrics["forward_flops"] + upd.metrics["backward_flops"]) / info.flops_per_s
        return compute_s, transfer_seconds(info, upd.upload_bytes(), down)

    def train_clients(
        self, round_idx: int, training: list[ClientInfo], aggregation: Aggregation
    ) -> tuple[list[ClientSummary], dict[int, tuple[float, float]], int, list[int]]:
        """In-process local training: each client in turn on the one shared model, through the
        round guard (injected faults, a client's exception caught, DP on the upload, validation of
        the update as it arrives); an accepted update is folded into ``aggregation`` and dropped
        (the server holds O(1) updates). Returns (summaries, simulated (compute, link) seconds per
        client, download bytes, failed clients); the model holds the global weights again."""
        mm = self.mm
        global_state = {k: v.detach().clone() for k, v in mm.model.state_dict().items()}
        full_down = download_bytes(mm)
        down_total = 0
        summaries: list[ClientSummary] = []
        client_times: dict[int, tuple[float, float]] = {}
        failed: list[int] = []
        errors: list[Exception] = []
        self.guard.begin_round(mm)
        for i, cinfo in enumerate(training):
            cid = cinfo.client_id
            client = self.fed.clients[cid]
            mm.model.load_state_dict(global_state)
            plan = self.make_plan(cinfo, round_idx)
            down = self.method.download_bytes(mm, cinfo, full_down)
            down_total += down
            self.on_event({"kind": "client_start", "round": round_idx, "client": cid, "index": i, "of": len(training)})
            parts: dict[int, tuple[float, float]] = {}

            def seconds_of(u: ClientUpdate, cid: int = cid, down: int = down) -> float:
                parts[cid] = self.client_sim_seconds(cid, u, down)
                return sum(parts[cid])

            outcome = self.guard.run_client(
                round_idx, mm, cinfo, plan,
                train=lambda prog, cid=cid, client=client, plan=plan: train_client(
                    mm, cid, self.fed.tokens, client.train_idx, plan, self.settings,
                    seed=self.client_seed(round_idx, cid), progress=prog, nonce=self.guard.nonce(cid)),
                seconds_of=seconds_of,
                progress=lambda p, r=round_idx: self.on_event({"kind": "step", "round": r, **p}),
            )
            if outcome.seconds is not None:
                client_times[cid] = split_seconds(outcome.seconds, parts.get(cid))
            if outcome.failed is not None:
                failed.append(cid)
                self.on_event({"kind": "client_failed", "round": round_idx, "client": cid, "reason": outcome.failed})
                if outcome.error is not None:
                    errors.append(outcome.error)
                continue
            if outcome.update is not None:
                summaries.append(ClientSummary.of(outcome.update))
                self.receive(aggregation, outcome.update)
            del outcome  # the server keeps only the running sums
        if training and len(errors) == len(training):
            raise errors[0]  # every client raised: a defect of the run, not of one client
        mm.model.load_state_dict(global_state)
        return summaries, client_times, down_total, failed

    def finish_round(
        self,
        round_idx: int,
        t0: float,
        sampled: list[int],
        summaries: list[ClientSummary],
        client_times: dict[int, tuple[float, float]],
        down_total: int,
        failed: list[int],
        dropped: list[int],
        agg_metrics: dict[str, Any],
    ) -> RoundResult:
        """The round's metrics row (after aggregation): times, bytes, per-client statistics and,
        every ``eval_every`` rounds, the evaluation. Shared by both engines."""
        cfg = self.cfg
        guard_row = self.guard.end_round()
        for c in failed:  # failures decided outside the guard (memory) keep a reason too
            guard_row["failed_reasons"].setdefault(str(c), "training state does not fit memory")
        # the round lasts as long as its slowest client; its compute and link parts are reported apart
        critical = max(client_times.values(), key=sum) if client_times else (0.0, 0.0)
        round_sim = sum(critical)
        self.sim_time_s += round_sim
        self.sim_compute_s += critical[0]
        self.sim_comm_s += critical[1]
        row: dict[str, Any] = {
            "round": round_idx,
            "method": self.method.name,
            "train_loss": float(np.mean([u.train_loss for u in summaries if u.num_examples]))
            if any(u.num_examples for u in summaries) else None,
            "sim_time_s": self.sim_time_s,
            "round_sim_time_s": round_sim,
            "round_compute_time_s": critical[0],
            "round_comm_time_s": critical[1],
            "sim_compute_time_s": self.sim_compute_s,
            "sim_comm_time_s": self.sim_comm_s,
            "flops_per_client": float(np.mean([u.flops for u in summaries])) if summaries else 0.0,
            "upload_bytes": int(sum(u.upload_bytes for u in summaries)),
            "download_bytes": int(down_total),
            "failed_clients": failed,
            "dropped_clients": dropped,
            "sampled_clients": sampled,
            "backward_flops_per_client": float(np.mean([u.backward_flops for u in summaries])) if summaries else 0.0,
            "client_selected_experts": {str(u.client_id): u.selected_counts for u in summaries},
            "client_trained": {str(u.client_id): u.trained for u in summaries},
            "client_usage": {str(u.client_id): u.usage for u in summaries},
            "client_train_loss": {str(u.client_id): u.train_loss for u in summaries},
            "peak_expert_state": {str(u.client_id): u.peak_expert_state for u in summaries
                                  if u.peak_expert_state is not None},
            "client_budget": {str(u.client_id): self.budgets[u.client_id].budget for u in summaries},
            **selection_rates([u.diagnostics for u in summaries]),
            **agg_metrics,
            **guard_row,
        }
        last = round_idx == cfg.federation.rounds
        if round_idx % cfg.federation.eval_every == 0 or last:
            row.update(self.evaluate_global(clients=last or round_idx % cfg.federation.client_eval_every == 0
                                            or self.best is not None))
        else:
            row.update({"test_accuracy": None, "test_loss": None})
        self.wall_time_s += time.perf_counter() - t0
        row["wall_time_s"] = self.wall_time_s
        return RoundResult(round_idx, row)

    def run(self, rounds: int | None = None) -> list[dict[str, Any]]:
        """Run (or continue) up to ``rounds`` rounds with ``runtime.threads`` torch threads; returns
        all metric rows."""
        with torch_threads(self.cfg.runtime.threads):
            return self._run(rounds)

    def _run(self, rounds: int | None) -> list[dict[str, Any]]:
        cfg = self.cfg
        total = rounds if rounds is not None else cfg.federation.rounds
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out_dir / "config.toml")
        if self.round == 0 and not read_metrics(self.metrics_path):
            t0 = time.perf_counter()
            row = {"round": 0, "method": self.method.name, "train_loss": None, "sim_time_s": 0.0,
                   "upload_bytes": 0, "download_bytes": 0, "failed_clients": [], **self.evaluate_global(),
                   **self.warmup_metrics}
            # how decisive routing is when federation starts (mean top router probability)
            row["router_top_prob"] = mean_top_prob(self.mm, self.fed.tokens, self.fed.test_idx, max_batches=4)
            self.wall_time_s += time.perf_counter() - t0
            row["wall_time_s"] = self.wall_time_s
            append_metrics(self.metrics_path, row)
            if self.best is not None:
                self.best.offer(0, row, self.mm.model.state_dict())
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
                save_checkpoint(self.ckpt_root, r, self.mm.model.state_dict(), self.server_state(),
                                self.server_opt.state_tensors())
                prune_checkpoints(self.ckpt_root, cfg.federation.keep_checkpoints)
            if self.best is not None:  # after the round's checkpoint: a kept round is never ahead of resume
                self.best.offer(r, result.row, self.mm.model.state_dict())
                last_kept = r == cfg.federation.rounds and self.best.round not in (None, r)
                if last_kept and (kept := load_best(self.ckpt_root)) is not None:  # end with the kept model
                    self.mm.model.load_state_dict(kept[1], strict=True)
            self.on_event({"kind": "round_end", "round": r, "rounds": total, "row": result.row})
            if r == cfg.federation.rounds and cfg.model.lora_r > 0:  # LoRA experts: the PEFT adapter
                export_lora_adapter(self.mm, cfg, self.out_dir / "peft_adapter", result.row)
            if r == cfg.federation.rounds and cfg.model.adapter == "moe":  # MoE adapters of a dense model
                export_moe_adapters(self.mm, cfg, self.out_dir / "moe_adapters", result.row)
        return read_metrics(self.metrics_path)
