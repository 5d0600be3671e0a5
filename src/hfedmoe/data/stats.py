"""Per-client label statistics for reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def label_histogram(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_labels: int
) -> np.ndarray:
    """Count each label on each client.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer class ids.
    parts : sequence of np.ndarray
        One index array per client (as returned by :func:`~hfedmoe.data.partition.partition`).
    num_labels : int
        Number of classes K.

    Returns
    -------
    np.ndarray
        ``(C, K)`` int64 counts.
    """
    labels = np.asarray(labels)
    hist = np.zeros((len(parts), num_labels), dtype=np.int64)  # (C, K)
    for client, idx in enumerate(parts):
        hist[client] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_labels)
    return hist


def label_entropy(hist: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row's label distribution; ``(C, K) -> (C,)``.

    Empty rows get entropy 0. Lower mean entropy means stronger label skew.
    """
    hist = np.asarray(hist, dtype=np.float64)
    totals = hist.sum(axis=1, keepdims=True)  # (C, 1)
    probs = np.divide(hist, totals, out=np.zeros_like(hist), where=totals > 0)  # (C, K)
    logs = np.log(probs, out=np.zeros_like(probs), where=probs > 0)
    return -(probs * logs).sum(axis=1)
