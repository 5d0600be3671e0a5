"""Warnings that say what to try: each names what happened and the config field to change.

Two kinds, both plain sentences for the log, ``summary.json`` and ``report.md``:

- :func:`data_warnings` about the federation before training (a client holding most of the
  training rows, texts cut at ``data.max_length``, classes with very few examples);
- :func:`drift_warnings` about the run's accuracy curve (final accuracy well below the best
  round, predictions drifting towards one class). The collapse and majority-rate warnings stay in
  :func:`hfedmoe.report.classes.learning_warnings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A client holding more than this share of all training rows makes a warning.
MAJOR_CLIENT_SHARE = 0.5
#: Warn when more than this share of the examples reach ``data.max_length`` tokens (cut there).
TRUNCATION_SHARE = 0.2
#: Classes with fewer training examples than this are "tiny".
TINY_CLASS = 10
#: The final accuracy this far below the best round makes a warning.
BEST_ROUND_GAP = 0.05
#: Predictions of one class exceeding its true test share by this much (and at least
#: DRIFT_SHARE of all predictions) count as drifting towards it.
DRIFT_EXCESS, DRIFT_SHARE = 0.2, 0.6


def plural(n: int, word: str) -> str:
    """``1 client``, ``2 clients``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def data_warnings(
    client_rows: Sequence[int],
    client_names: Sequence[str],
    token_lengths: np.ndarray,
    max_length: int,
    text_chars: np.ndarray,
    train_labels: np.ndarray,
    label_names: Sequence[str],
    task: str = "classification",
) -> list[str]:
    """Warnings about the federation's data (see the module docstring).

    ``client_rows`` (C,) training rows per client, ``client_names`` (C,) their groups ("" none),
    ``token_lengths`` (N,) tokens per example after truncation, ``text_chars`` (N,) characters
    per text, ``train_labels`` (M,) labels of all clients' training rows.
    """
    out: list[str] = []
    rows = np.asarray(client_rows, dtype=np.int64)
    if len(rows) >= 2 and rows.sum() > 0:
        top = int(rows.argmax())
        share = rows[top] / rows.sum()
        if share > MAJOR_CLIENT_SHARE:
            who = f"client {top}" + (f" (group '{client_names[top]}')" if client_names[top] else "")
            fix = ("lower data.min_group_size or raise data.max_clients so fewer groups merge into it, or "
                   "use data.partition = 'natural-dirichlet' to split every group" if client_names[top]
                   else "raise data.alpha or use data.partition = 'iid'")
            out.append(f"{who} holds {100 * share:.0f}% of the training rows ({rows[top]} of {rows.sum()}): "
                       f"the run is close to centralised training on it; {fix}")
    lengths = np.asarray(token_lengths)
    if len(lengths) and task == "classification":  # a causal LM's layout reports its own kept share
        cut = float((lengths >= max_length).mean())
        if cut > TRUNCATION_SHARE:
            p90 = int(np.percentile(np.asarray(text_chars), 90)) if len(text_chars) else 0
            out.append(f"{100 * cut:.0f}% of the texts reach data.max_length = {max_length} tokens and are cut "
                       f"there (median text {int(np.median(text_chars))} characters, 90th percentile {p90}): "
                       "raise data.max_length (up to 512 for MiniLM; time grows with it)")
    if task == "classification" and len(train_labels):
        counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(label_names))
        tiny = [k for k in range(len(counts)) if counts[k] < TINY_CLASS]
        if tiny:
            named = ", ".join(f"'{label_names[k]}' ({counts[k]})" for k in tiny[:8]) + (" ..." if len(tiny) > 8 else "")
            out.append(f"{len(tiny)} class{'es' if len(tiny) > 1 else ''} with fewer than {TINY_CLASS} training examples: "
                       f"{named}; the model can hardly learn them: merge or drop them in the file "
                       "(data.label_column), or set train.loss = 'balanced' to weigh them up")
    return out


def drift_warnings(rows: Sequence[dict[str, Any]], test_share: Sequence[float] = (),
                   label_names: Sequence[str] | None = None, kept_round: int | None = None) -> list[str]:
    """Warnings about the accuracy curve of a classification run (metrics rows, round 0 first;
    ``test_share`` (K,): each class's share of the test set; ``kept_round``: the round
    ``federation.select_model = "best-val"`` kept, None when the run ends with its last round)."""
    ev = [r for r in rows if r.get("test_accuracy") is not None and r.get("round", 0) > 0]
    if not ev:
        return []
    out: list[str] = []
    last = ev[-1]
    best = max(ev, key=lambda r: r["test_accuracy"])
    if best["test_accuracy"] - last["test_accuracy"] >= BEST_ROUND_GAP and kept_round is not None:
        out.append(f"the last round's test accuracy {100 * last['test_accuracy']:.1f}% is "
                   f"{100 * (best['test_accuracy'] - last['test_accuracy']):.1f} points below round {best['round']}'s; "
                   f"the run keeps round {kept_round}, chosen on the clients' validation splits (predict and export "
                   "use it); to steady the rounds lower train.lr or set federation.server_optimizer = 'avgm'")
    elif best["test_accuracy"] - last["test_accuracy"] >= BEST_ROUND_GAP:
        out.append(f"final test accuracy {100 * last['test_accuracy']:.1f}% is "
                   f"{100 * (best['test_accuracy'] - last['test_accuracy']):.1f} points below round "
                   f"{best['round']} ({100 * best['test_accuracy']:.1f}%): keep the round the clients' validation splits "
                   "rate best (federation.select_model = 'best-val'), lower train.lr, or smooth the rounds with "
                   "federation.server_optimizer = 'avgm'")
    share = last.get("test_pred_share") or []
    if share and len(test_share) == len(share):
        top = int(np.argmax(share))
        true_share = float(test_share[top])
        if DRIFT_SHARE <= share[top] < 0.95 and share[top] - true_share >= DRIFT_EXCESS:
            name = label_names[top] if label_names is not None and top < len(label_names) else str(top)
            out.append(f"the final model predicts class '{name}' for {100 * share[top]:.0f}% of the test set "
                       f"(its true share is {100 * true_share:.0f}%): label skew pulls it towards one class; try "
                       "train.loss = 'logit-adjusted' (each client's own label counts offset its logits)")
    return out
