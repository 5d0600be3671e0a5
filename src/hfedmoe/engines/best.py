"""``federation.select_model = "best-val"``: the run ends with the global model of the evaluated
round whose client VALIDATION score is best, never chosen on the test set: classification, the
accuracy pooled over all clients' validation examples (highest); causal LM, the mean of the
clients' validation perplexities (lowest).

With label skew the global model can swing between classes from round to round, so the last
round alone is close to a coin flip (docs/label-skew.md); keeping the round the clients' own
validation splits rate best is the usual early-stopping guard. The kept model lives in
``checkpoints/best/round_<K>/`` (an atomic, checksummed checkpoint like the others, outside the
rounds that resume reads); export, predict and generate load it, the report names round K and its
test scores next to the last round's.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from hfedmoe.bench.metric import metric_for
from hfedmoe.engines.checkpoint import (
    CheckpointError, complete_rounds, load_checkpoint, prune_checkpoints, save_checkpoint,
)

log = logging.getLogger(__name__)

BEST_DIR = "best"


#: The metrics-row key that chooses the round, per task. Classification: pooled, not the mean over
#: clients: under label skew a model predicting the class most clients hold scores a high mean
#: (measured: 60% mean vs 52.5% test for a one-class VADER model).
SELECT_KEY = {"classification": "client_val_accuracy_pooled", "causal-lm": "client_val_perplexity_mean"}


def val_score(row: dict[str, Any], key: str) -> float | None:
    """The row's client validation score ``key``, or None when the round has none (not evaluated,
    no client has a validation split, or a non-finite value)."""
    v = row.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def select_round(rows: list[dict[str, Any]], task: str) -> int | None:
    """The round with the best client validation score (``SELECT_KEY``; the earliest on ties); None when no
    row has one. Pure: what :class:`BestModel` keeps, computed from metrics rows alone."""
    metric, key = metric_for(task), SELECT_KEY[task]
    best: tuple[int, float] | None = None
    for row in rows:
        v = val_score(row, key)
        if v is not None and (best is None or metric.better(v, best[1])):
            best = (int(row["round"]), v)
    return None if best is None else best[0]


def best_round_on_disk(ckpt_root: Path) -> int | None:
    """Round of the kept best-val checkpoint in ``ckpt_root/best``, None when there is none."""
    rounds = complete_rounds(ckpt_root / BEST_DIR)
    return rounds[-1] if rounds else None


def load_best(ckpt_root: Path) -> tuple[int, dict[str, torch.Tensor]] | None:
    """The kept best-val model (round, tensors), verified; None when there is none."""
    r = best_round_on_disk(ckpt_root)
    if r is None:
        return None
    tensors, _ = load_checkpoint(ckpt_root / BEST_DIR, r)
    return r, tensors


class BestModel:
    """Keeps ``checkpoints/best`` in step with the rounds' validation scores."""

    def __init__(self, ckpt_root: Path, task: str) -> None:
        self.root = ckpt_root / BEST_DIR
        self.metric, self.key = metric_for(task), SELECT_KEY[task]
        self.round: int | None = None
        self.score: float | None = None

    def offer(self, round_idx: int, row: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> bool:
        """Keep this round's model when its validation score beats the kept one; True if kept."""
        v = val_score(row, self.key)
        if v is None or (self.score is not None and not self.metric.better(v, self.score)):
            return False
        save_checkpoint(self.root, round_idx, state_dict,
                        {"round": round_idx, "selected_by": self.key, "score": v})
        prune_checkpoints(self.root, 1)
        self.round, self.score = round_idx, v
        return True

    def restore(self, rows: list[dict[str, Any]], resumed_round: int,
                state_dict: dict[str, torch.Tensor]) -> str | None:
        """Take up the kept model after a resume to ``resumed_round`` (``rows`` up to it,
        ``state_dict`` its model). A kept model from a round after the resumed one (its row was
        dropped) or one that does not verify is discarded, and the resumed round's own model is
        kept when it has a score; returns a note when something was discarded."""
        on_disk = best_round_on_disk(self.root.parent)
        row_of = {int(r["round"]): r for r in rows}
        note = None
        if on_disk is not None and on_disk <= resumed_round and on_disk in row_of:
            try:
                load_checkpoint(self.root, on_disk)
                self.round, self.score = on_disk, val_score(row_of[on_disk], self.key)
                return None
            except CheckpointError as exc:
                note = f"best-val model of round {on_disk} is not usable ({exc}); discarded"
        elif on_disk is not None:
            note = (f"best-val model of round {on_disk} was made after the resumed round {resumed_round}; "
                    "discarded")
        if self.root.exists():
            shutil.rmtree(self.root)
        self.round = self.score = None
        if resumed_round in row_of:
            self.offer(resumed_round, row_of[resumed_round], state_dict)
        if note:
            log.warning("%s", note)
        return note


def selected_summary(rows: list[dict[str, Any]], task: str, kept_round: int | None = None) -> dict[str, Any]:
    """Summary fields of the kept round (``selected_*``: its round, validation score and test
    scores): ``kept_round`` (what the run kept, :func:`best_round_on_disk`; after a resume that
    discarded a kept model it need not be the rows' best), else :func:`select_round` of the rows;
    {} when there is none."""
    r = kept_round if kept_round is not None else select_round(rows, task)
    row = next((x for x in rows if int(x["round"]) == r), None)
    if row is None:
        return {}
    key = SELECT_KEY[task]
    out: dict[str, Any] = {"selected_round": r, "selected_by": key, "selected_val_score": row[key]}
    for key in ("test_accuracy", "test_macro_f1", "test_pred_share", "test_perplexity"):
        if row.get(key) is not None:
            out[f"selected_{key}"] = row[key]
    return out
