"""The engine side of a round's safety: injected client faults, caught client exceptions,
client-level DP on the upload, and the validation of each update as the server receives it.

One :class:`RoundGuard` per run. Per round the engine calls :meth:`begin_round` (global reference
tensors), then for each client :meth:`run_client`, which trains it (through the engine's
callable), applies the client's DP, and hands the upload to :meth:`receive`, the one place where
an update is accepted or rejected. :meth:`end_round` returns the round's metrics fields.

Faults are drawn from the run seed, the round and the client, so a faulted run repeats exactly
and resumes bit-identically. DP noise is not (it must be unknown to the server): a DP run resumes
from its checkpoint with its accounting intact but does not repeat bit for bit.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hfedmoe.core.privacy import epsilon, privatize_update
from hfedmoe.core.validation import (
    Allowance,
    NormBound,
    Reference,
    allowed_experts,
    check_update,
    update_distance,
)
from hfedmoe.core.step_bound import StepBounds, adamw_distance_bounds
from hfedmoe.data.batches import local_step_count
from hfedmoe.methods._common import seed_of

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The crash a ``faults.kinds = ["crash"]`` client raises in the middle of local training."""


@dataclass
class ClientOutcome:
    update: Any | None  # the accepted update, or None
    seconds: float | None  # simulated seconds the server spent on it (None: nothing to wait for)
    failed: str | None = None  # why it failed (crash, straggler, no answer, exception)
    rejected: str | None = None  # why its update was rejected
    error: Exception | None = None  # the exception its training raised (not an injected one)


def reference_of(mm: Any, dense_names: list[str]) -> Reference:
    """Clones of the global tensors updates are checked against (``mm`` holds the global model)."""
    dense = mm.dense_named_parameters()
    return Reference(
        experts=[mm.get_experts(layer) for layer in range(mm.num_layers)],
        routers=[mm.router_state(layer) for layer in range(mm.num_layers)],
        dense={n: dense[n].detach().clone() for n in dense_names},
    )


class RoundGuard:
    def __init__(self, cfg: Any, method: Any, settings: Any, dense_names: list[str]) -> None:
        self.cfg = cfg
        self.method = method
        self.settings = settings
        self.dense_names = dense_names
        u, p = cfg.updates, cfg.privacy
        self.norms = NormBound(u.norm_factor, u.norm_window, u.first_round_factor,
                               dp_clip=p.clip_norm if p.enabled else None, dp_sigma=p.noise_multiplier)
        self.uploads: dict[str, int] = {}  # client id -> noisy uploads so far (DP releases)
        self._ref: Reference | None = None
        self._failed: dict[str, str] = {}
        self._rejected: dict[str, str] = {}
        self._clip_norms: list[float] = []
        self._nonces: dict[int, str] = {}

    # --- per round ----------------------------------------------------------------------------
    def begin_round(self, mm: Any) -> None:
        need = self.cfg.updates.validate or self.cfg.privacy.enabled
        self._ref = reference_of(mm, self.dense_names) if need else None
        self._failed, self._rejected, self._clip_norms = {}, {}, []
        self._nonces = {}

    def nonce(self, cid: int) -> str:
        """This round's nonce for client ``cid`` (sent with its task; its update must echo it, so
        an update of another round, replayed or stale, is rejected). Random: it never touches the
        model, so runs stay reproducible."""
        if cid not in self._nonces:
            self._nonces[cid] = secrets.token_hex(16)
        return self._nonces[cid]

    def steps(self, cinfo: Any) -> int:
        """Local steps the client is asked to run this round."""
        s = self.settings
        return local_step_count(cinfo.num_examples, s.batch_size, s.local_epochs, s.local_steps, s.min_local_steps)

    def step_bounds(self, cinfo: Any, dist: Any) -> StepBounds | None:
        """The most an honest AdamW client moves the weights this round (core/step_bound.py)."""
        s = self.settings
        if s.optimizer != "adamw":
            return None
        return adamw_distance_bounds(s.lr, self.steps(cinfo), s.weight_decay, dist.dtype_eps,
                                     dist.global_max_abs, dist.global_norm, dist.dims)

    def fault(self, round_idx: int, cid: int) -> str | None:
        f = self.cfg.faults
        if f.rate <= 0:
            return None
        rng = np.random.default_rng(seed_of(self.cfg.seed, round_idx, cid, 13))
        hit = rng.random() < f.rate
        kind = f.kinds[int(rng.integers(len(f.kinds)))]
        return kind if hit else None

    def allowance(self, mm: Any, cinfo: Any, plan: Any) -> Allowance:
        steps = self.steps(cinfo)
        bounded = self.method.respects_budget and not self.method.ignores_budget
        per_layer = self.cfg.method.budget_scope == "layer"
        # model scope: the baselines give every layer at least one expert (methods/_common.py)
        per_batch = cinfo.budget if per_layer else max(cinfo.budget, mm.num_layers)
        return Allowance(
            num_examples=cinfo.num_examples,
            experts=allowed_experts(mm.num_layers, mm.num_experts, plan.static_subsets, plan.restrict)
            if "experts" in self.settings.trainable else torch.zeros(mm.num_layers, mm.num_experts, dtype=torch.bool),
            max_selections=per_batch * steps if bounded else None,
            per_layer=per_layer,
            routers="routers" in self.settings.trainable and plan.train_routers,
            dense=frozenset(self.dense_names),
            steps=steps,
            nonce=self._nonces.get(cinfo.client_id, ""),
        )

    def run_client(
        self,
        round_idx: int,
        mm: Any,
        cinfo: Any,
        plan: Any,
        train: Callable[[Callable[[dict], None] | None], Any],
        seconds_of: Callable[[Any], float],
        progress: Callable[[dict], None] | None = None,
    ) -> ClientOutcome:
        """Train one client through ``train(progress)`` with its injected fault (if any), catch
        an exception in its training, apply its DP, and receive its upload."""
        cid = cinfo.client_id
        fault = self.fault(round_idx, cid)
        if fault == "no_answer":
            return self._fail(round_idx, cid, "no answer (injected)", self._deadline_or_none())
        if fault == "crash":
            def crashing(p: dict, inner=progress) -> None:
                if inner is not None:
                    inner(p)
                raise InjectedFault(f"injected crash after local step {p.get('step')}")
            prog = crashing
        else:
            prog = progress
        try:
            upd = train(prog)
        except InjectedFault as exc:
            return self._fail(round_idx, cid, f"crash (injected): {exc}", None)
        except Exception as exc:  # noqa: BLE001 - one client's bug or bad data must not kill the round
            log.warning("round %d: client %d raised %s: %s", round_idx, cid, type(exc).__name__, exc)
            out = self._fail(round_idx, cid, f"exception: {type(exc).__name__}: {exc}", None)
            out.error = exc
            return out
        try:  # both walk the update: a malformed one (experts as a list, ...) fails its client only
            seconds = seconds_of(upd)
            if self.cfg.privacy.enabled:
                self._privatize(round_idx, cid, upd)
        except Exception as exc:  # noqa: BLE001 - the upload's shape is the client's, not the server's
            return self._fail(round_idx, cid, f"malformed update: {type(exc).__name__}: {exc}", None)
        deadline = self.cfg.faults.round_deadline_s
        if fault == "straggler":
            seconds *= self.cfg.faults.straggler_factor
            return self._fail(round_idx, cid, f"straggler (injected): answered after the round deadline "
                                              f"({seconds:.3g} s simulated)", deadline if deadline > 0 else None)
        if deadline > 0 and seconds > deadline:
            return self._fail(round_idx, cid, f"straggler: {seconds:.3g} s > round deadline {deadline:.3g} s", deadline)
        reason = self.receive(round_idx, mm, cinfo, plan, upd)
        if reason is not None:
            return ClientOutcome(None, seconds, rejected=reason)
        return ClientOutcome(upd, seconds)

    def receive(self, round_idx: int, mm: Any, cinfo: Any, plan: Any, upd: Any) -> str | None:
        """Accept (None) or reject (the reason) one update as it arrives: the engines' one hook."""
        if not self.cfg.updates.validate:
            return None
        ref = self._ref
        assert ref is not None, "begin_round first"
        reason = check_update(upd, ref, self.allowance(mm, cinfo, plan))
        if reason is None:
            dist = update_distance(upd, ref)
            reason = self.norms.check(dist.l2, dist.global_norm, dist.dims, self.step_bounds(cinfo, dist),
                                      dist.max_abs)
            if reason is None:
                self.norms.accept(dist.l2)
        if reason is not None:
            cid = cinfo.client_id
            self._rejected[str(cid)] = reason
            log.warning("round %d: rejected the update of client %d: %s", round_idx, cid, reason)
        return reason

    def end_round(self) -> dict[str, Any]:
        """Close the round (norm history) and return its metrics fields."""
        self.norms.end_round()
        row: dict[str, Any] = {"failed_reasons": dict(self._failed), "rejected_clients": dict(self._rejected)}
        p = self.cfg.privacy
        if p.enabled:
            row["dp_epsilon"] = self.epsilon()
            row["dp_delta"] = p.delta
            row["dp_preclip_norm_median"] = float(np.median(self._clip_norms)) if self._clip_norms else None
        self._ref = None
        return row

    def epsilon(self) -> float:
        """The run's epsilon so far: the worst client's, over the uploads it made."""
        p = self.cfg.privacy
        return epsilon(p.noise_multiplier, max(self.uploads.values(), default=0), p.delta)

    # --- helpers ------------------------------------------------------------------------------
    def _privatize(self, round_idx: int, cid: int, upd: Any) -> None:
        p = self.cfg.privacy
        assert self._ref is not None
        # the client's own secure noise (core/privacy.py): nothing the server knows seeds it
        self._clip_norms.append(privatize_update(upd, self._ref, p.clip_norm, p.noise_multiplier))
        self.uploads[str(cid)] = self.uploads.get(str(cid), 0) + 1

    def _deadline_or_none(self) -> float | None:
        d = self.cfg.faults.round_deadline_s
        return d if d > 0 else None

    def _fail(self, round_idx: int, cid: int, reason: str, seconds: float | None) -> ClientOutcome:
        self._failed[str(cid)] = reason
        log.warning("round %d: client %d failed: %s", round_idx, cid, reason)
        return ClientOutcome(None, seconds, failed=reason)

    # --- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"norms": self.norms.state_dict(), "uploads": dict(self.uploads)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms.load_state_dict(state.get("norms", {}))
        self.uploads = {str(k): int(v) for k, v in state.get("uploads", {}).items()}
