"""Held-out test split per run and per-client validation splits (pure numpy, seeded)."""

from __future__ import annotations

import numpy as np

from hfedmoe.errors import HFedMoEError


def train_test_split(
    n_or_labels: int | np.ndarray,
    test_fraction: float,
    seed: int,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(N)`` into a training part and a fixed held-out test set.

    Parameters
    ----------
    n_or_labels : int or np.ndarray
        The number of examples, or their ``(N,)`` integer labels (needed to stratify).
    test_fraction : float
        Share of examples held out, in (0, 1); the test set has ``round(test_fraction * N)``.
    seed : int
        Seed of the random generator; the same seed gives the same split.
    stratify : bool
        Keep each label's share in the test set (largest-remainder allocation). Ignored when
        only a count is given.

    Returns
    -------
    train_idx, test_idx : np.ndarray
        Sorted, disjoint int64 arrays covering ``range(N)``, both non-empty.
    """
    if isinstance(n_or_labels, (int, np.integer)):
        num_examples, labels = int(n_or_labels), None
    else:
        labels = np.asarray(n_or_labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise HFedMoEError(
                f"n_or_labels: expected an int or 1-D integer labels, got shape {labels.shape} "
                f"dtype {labels.dtype}"
            )
        num_examples = len(labels)
    if not 0.0 < test_fraction < 1.0:
        raise HFedMoEError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    num_test = int(round(test_fraction * num_examples))
    if num_test < 1 or num_test > num_examples - 1:
        raise HFedMoEError(
            f"test_fraction: {test_fraction} of {num_examples} examples gives {num_test} test "
            f"examples, expected between 1 and {num_examples - 1}"
        )
    rng = np.random.default_rng(seed)
    if labels is None or not stratify:
        test_idx = rng.permutation(num_examples)[:num_test]
    else:
        classes, counts = np.unique(labels, return_counts=True)
        quotas = _largest_remainder(counts, num_test)  # (K,)
        test_idx = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == k))[:q] for k, q in zip(classes, quotas)]
        )
    test_mask = np.zeros(num_examples, dtype=bool)
    test_mask[test_idx] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def _largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """Integer quotas proportional to ``counts`` summing to ``total`` (Hamilton's method)."""
    exact = counts * total / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    leftover = total - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:leftover]] += 1
    return np.minimum(quotas, counts)


def client_val_split(
    indices: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's example indices into local training and validation parts.

    Parameters
    ----------
    indices : np.ndarray
        The client's dataset indices (any order).
    val_fraction : float
        Share held out for validation, in [0, 1). With ``val_fraction > 0`` the validation part
        has ``round(val_fraction * n)`` examples, at least 1 and at most ``n - 1``.
    seed : int
        Seed of the random generator (give each client its own, e.g. ``seed + client``).

    Returns
    -------
    train_idx, val_idx : np.ndarray
        Sorted subsets of ``indices``; ``train_idx`` is never empty, ``val_idx`` is empty
        only when ``val_fraction == 0``.

    Raises
    ------
    HFedMoEError
        When ``indices`` is empty, or has one example and a validation part is asked for.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    num_examples = len(indices)
    if not 0.0 <= val_fraction < 1.0:
        raise HFedMoEError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
    if num_examples == 0:
        raise HFedMoEError("indices: expected at least 1 example for the client, got 0")
    if val_fraction == 0.0:
        return np.sort(indices), np.empty(0, dtype=np.int64)
    if num_examples < 2:
        raise HFedMoEError(
            f"indices: a validation split needs at least 2 examples (1 train + 1 val), got "
            f"{num_examples}; use val_fraction=0 or fewer clients"
        )
    num_val = min(max(1, int(round(val_fraction * num_examples))), num_examples - 1)
    shuffled = np.random.default_rng(seed).permutation(indices)
    return np.sort(shuffled[num_val:]), np.sort(shuffled[:num_val])
