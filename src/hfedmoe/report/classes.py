"""Per-class metrics from a confusion matrix, and plain warnings for runs that did not learn.

A run on label-skewed data can sit at the majority-class rate while its accuracy looks fine;
per-class accuracy (recall), macro-F1 and the share of each predicted class make that visible,
and :func:`learning_warnings` says it in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A model predicting one class for at least this share of the test set "predicts (nearly) one class".
ONE_CLASS_SHARE = 0.95
#: Final accuracy within this many points of the majority rate counts as "at the majority rate".
MAJORITY_MARGIN = 0.01


def class_metrics(confusion: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Per-class accuracy (recall), precision, F1, macro-F1 and predicted-class shares.

    Parameters
    ----------
    confusion : (K, K) counts, rows = true class, columns = predicted class.

    Returns
    -------
    dict with ``class_accuracy`` (K,), ``class_f1`` (K,), ``macro_f1`` (mean F1 over classes
    present in the true labels), ``pred_share`` (K,) and ``class_support`` (K,). A class with no
    true examples gets accuracy None; F1 of a class that is never true nor predicted is excluded.
    """
    cm = np.asarray(confusion, dtype=np.float64)  # (K, K)
    if cm.size == 0:
        return {"class_accuracy": [], "class_f1": [], "macro_f1": None, "pred_share": [], "class_support": []}
    support = cm.sum(axis=1)  # (K,) true examples per class
    predicted = cm.sum(axis=0)  # (K,)
    tp = np.diag(cm)
    total = cm.sum()
    recall = np.divide(tp, support, out=np.full_like(tp, np.nan), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + np.nan_to_num(recall)
    f1 = np.divide(2 * precision * np.nan_to_num(recall), denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return {
        "class_accuracy": [None if np.isnan(r) else float(r) for r in recall],
        "class_f1": [float(x) for x in f1],
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "pred_share": [float(x) for x in (predicted / total if total else predicted)],
        "class_support": [int(x) for x in support],
    }


def learning_warnings(final_accuracy: float | None, majority_rate: float | None, pred_share: Sequence[float],
                      label_names: Sequence[str] | None = None) -> list[str]:
    """Plain sentences for a global model that predicts (nearly) one class or ends at the majority rate."""
    out: list[str] = []
    if pred_share:
        top = int(np.argmax(pred_share))
        name = label_names[top] if label_names is not None and top < len(label_names) else str(top)
        if pred_share[top] >= ONE_CLASS_SHARE:
            out.append(f"the final global model predicts class '{name}' for {100 * pred_share[top]:.1f}% of the "
                       "test set: it has (nearly) collapsed to one class; with label-skewed clients try train.loss = "
                       "'logit-adjusted' (docs/label-skew.md)")
    if final_accuracy is not None and majority_rate is not None and final_accuracy <= majority_rate + MAJORITY_MARGIN:
        out.append(f"final test accuracy {100 * final_accuracy:.1f}% is not above the majority-class rate "
                   f"{100 * majority_rate:.1f}% (+{100 * MAJORITY_MARGIN:.0f} point): the run did not learn "
                   "beyond always predicting the most common class; give it more training (federation.rounds, "
                   "train.local_epochs, train.lr) or try train.loss = 'logit-adjusted' (docs/label-skew.md)")
    return out


def human_duration(seconds: float | None) -> str:
    """``3725.4 -> "1 h 2 min 5 s"``, ``42.31 -> "42.3 s"``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m} min {s} s"
    return f"{m} min {s} s"
