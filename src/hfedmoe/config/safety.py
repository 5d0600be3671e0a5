"""Config sections for the safety of a run: checks on client updates (``[updates]``), injected
client faults (``[faults]``) and client-level differential privacy (``[privacy]``).

Kept apart from ``schema.py`` so the sections and their range checks live in one small file;
``schema.RunConfig`` holds them as fields and ``schema.validate`` calls :func:`check_safety`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("crash", "straggler", "no_answer")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class UpdatesConfig:
    validate: bool = _f(True, "check every client update before aggregation (finite, shapes, dtypes, expert ids, "
                              "trained claims, example counts, score ranges, the round's nonce, norm) and reject bad "
                              "ones")
    norm_factor: float = _f(10.0, "reject an update whose distance to the global model (L2) exceeds this times "
                                  "the median distance of the accepted updates of the previous norm_window rounds "
                                  "(with AdamW also: more than the optimizer can move the weights in the round)")
    norm_window: int = _f(3, "rounds of accepted-update norms the median is taken over")
    first_round_factor: float = _f(10.0, "train.optimizer = 'sgd' while there is no history (first round): reject an "
                                         "update whose distance to the global model exceeds this times the norm of "
                                         "the global tensors it replaces (AdamW: the optimizer's step bound instead, "
                                         "in every round)")


@dataclass
class FaultsConfig:
    rate: float = _f(0.0, "probability that a sampled client faults in a round (seeded by the run seed, round "
                          "and client); 0 = no injected faults")
    kinds: list = _f(list(FAULT_KINDS), "kinds drawn uniformly for a faulted client: crash (exception in the "
                                        "middle of local training), straggler (answers after the round deadline), "
                                        "no_answer (never answers)")
    round_deadline_s: float = _f(0.0, "simulated seconds the server waits for a round; later clients are dropped "
                                      "as stragglers (0 = wait for the slowest answering client)")
    straggler_factor: float = _f(10.0, "an injected straggler's simulated time is multiplied by this (and it always "
                                       "misses the deadline)")


@dataclass
class PrivacyConfig:
    enabled: bool = _f(False, "client-level differential privacy: each client clips its update (distance to the "
                              "global tensors it uploads) to clip_norm and adds Gaussian noise before uploading")
    clip_norm: float = _f(1.0, "L2 bound C on one client's update per round")
    noise_multiplier: float = _f(1.0, "noise standard deviation in units of clip_norm (sigma)")
    delta: float = _f(1e-5, "delta of the reported (epsilon, delta) guarantee")


def check_safety(cfg: Any, need: Callable[[bool, str, str, Any], None]) -> None:
    """Range checks of the three sections (called by ``schema.validate`` with its ``need``)."""
    u, f, p = cfg.updates, cfg.faults, cfg.privacy

    def finite(x: float) -> bool:
        return isinstance(x, (int, float)) and math.isfinite(x)

    need(finite(u.norm_factor) and u.norm_factor > 1.0, "updates.norm_factor", "a finite float > 1", u.norm_factor)
    need(1 <= u.norm_window <= 1000, "updates.norm_window", "an integer in [1, 1000]", u.norm_window)
    need(finite(u.first_round_factor) and u.first_round_factor > 0, "updates.first_round_factor",
         "a finite float > 0", u.first_round_factor)
    need(finite(f.rate) and 0.0 <= f.rate <= 1.0, "faults.rate", "a float in [0, 1]", f.rate)
    bad = [k for k in f.kinds if k not in FAULT_KINDS]
    need(bool(f.kinds) and not bad, "faults.kinds", "a non-empty list of " + ", ".join(FAULT_KINDS), f.kinds)
    need(finite(f.round_deadline_s) and f.round_deadline_s >= 0, "faults.round_deadline_s", "a finite float >= 0",
         f.round_deadline_s)
    need(finite(f.straggler_factor) and f.straggler_factor >= 1, "faults.straggler_factor", "a finite float >= 1",
         f.straggler_factor)
    need(finite(p.clip_norm) and p.clip_norm > 0, "privacy.clip_norm", "a finite float > 0", p.clip_norm)
    need(finite(p.noise_multiplier) and p.noise_multiplier > 0, "privacy.noise_multiplier", "a finite float > 0",
         p.noise_multiplier)
    need(finite(p.delta) and 0 < p.delta < 1, "privacy.delta", "a float in (0, 1)", p.delta)
