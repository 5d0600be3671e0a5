"""Split a dataset's example indices among federated clients (pure numpy, seeded).

Schemes
-------
``"iid"``
    Shuffle, then cut into ``num_clients`` near-equal parts.
``"dirichlet"``
    Label skew (Hsu et al. 2019): for each label, the share of each client is drawn from
    ``Dir(alpha)``; redrawn until every client has at least ``min_size`` examples.
``"shards"``
    Pathological label skew (McMahan et al. 2017): sort by label, cut into
    ``num_clients * shards_per_client`` shards, deal ``shards_per_client`` random shards to each.
``"natural"``
    One client per distinct value of ``groups`` (sorted), e.g. one per domain (feature skew).
``"natural-dirichlet"``
    ``"natural"`` first, then each group split into ``clients_per_group`` clients by
    ``"dirichlet"``; clients are ordered group by group (sorted), then by client within group.

For the natural schemes the client count follows from the data: pass ``num_clients=None``, or
the exact count (``num_groups * clients_per_group``) as a check.
"""

from __future__ import annotations

import numpy as np

from hfedmoe.errors import HFedMoEError

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards", "natural", "natural-dirichlet")
#: Redraws of the Dirichlet proportions before giving up on ``min_size``.
MAX_DIRICHLET_TRIES = 1000


def partition(
    labels: np.ndarray,
    num_clients: int | None,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    groups: np.ndarray | None = None,
    shards_per_client: int = 2,
    min_size: int = 1,
    clients_per_group: int = 1,
) -> list[np.ndarray]:
    """Assign every example index to exactly one client.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer class ids.
    num_clients : int or None
        Number of clients; None only for the natural schemes (derived from ``groups``).
    scheme : str
        One of :data:`SCHEMES`.
    seed : int
        Seed of the only random generator used; the same seed gives the same partition.
    alpha : float
        Dirichlet concentration (> 0); small values give strong label skew.
    groups : np.ndarray or None
        ``(N,)`` group of each example; required by the natural schemes.
    shards_per_client : int
        Shards per client for ``"shards"``.
    min_size : int
        Minimum examples per client for the Dirichlet schemes (>= 1).
    clients_per_group : int
        Clients per group for ``"natural-dirichlet"``.

    Returns
    -------
    list of np.ndarray
        One sorted int64 index array per client, each non-empty; together a disjoint cover
        of ``range(N)``.

    Raises
    ------
    HFedMoEError
        Naming the field, the expected and the actual value: unknown scheme, ``alpha <= 0``,
        more clients than examples, a client left without data, a bad client count.
    """
    labels = _check_labels(labels)
    num_examples = len(labels)
    if scheme not in SCHEMES:
        raise HFedMoEError(f"scheme: expected one of {', '.join(SCHEMES)}, got {scheme!r}")
    rng = np.random.default_rng(seed)
    if scheme in ("dirichlet", "natural-dirichlet"):
        if not np.isfinite(alpha) or alpha <= 0:
            raise HFedMoEError(f"alpha: expected a finite value > 0, got {alpha}")
        if min_size < 1:
            raise HFedMoEError(f"min_size: expected >= 1, got {min_size}")

    if scheme in ("natural", "natural-dirichlet"):
        if scheme == "natural":
            clients_per_group = 1
        elif clients_per_group < 1:
            raise HFedMoEError(f"clients_per_group: expected >= 1, got {clients_per_group}")
        group_idx = _split_by_group(labels, groups)
        expected = len(group_idx) * clients_per_group
        if num_clients is not None and num_clients != expected:
            raise HFedMoEError(
                f"num_clients: scheme {scheme!r} gives {len(group_idx)} groups x "
                f"{clients_per_group} clients_per_group = {expected} clients, got {num_clients}"
            )
        parts: list[np.ndarray] = []
        for name, idx in group_idx.items():
            if clients_per_group == 1:
                parts.append(idx)
                continue
            sub_parts = _dirichlet(
                labels[idx], clients_per_group, alpha, min_size, rng, where=f"group {name!r}: "
            )
            parts.extend(idx[p] for p in sub_parts)
    else:
        if num_clients is None or num_clients < 1:
            raise HFedMoEError(f"num_clients: expected an integer >= 1, got {num_clients}")
        if num_clients > num_examples:
            raise HFedMoEError(
                f"num_clients: expected at most the number of examples {num_examples}, "
                f"got {num_clients}"
            )
        if scheme == "iid":
            parts = np.array_split(rng.permutation(num_examples), num_clients)
        elif scheme == "dirichlet":
            parts = _dirichlet(labels, num_clients, alpha, min_size, rng, where="")
        else:
            parts = _shards(labels, num_clients, shards_per_client, rng)

    parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    for client, part in enumerate(parts):
        if len(part) == 0:
            raise HFedMoEError(f"partition: client {client} has no data (expected >= 1 example)")
    return parts


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise HFedMoEError(
            f"labels: expected a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if len(labels) == 0:
        raise HFedMoEError("labels: expected at least 1 example, got 0")
    if labels.min() < 0:
        raise HFedMoEError(f"labels: expected ids >= 0, got {labels.min()}")
    return labels.astype(np.int64, copy=False)


def _split_by_group(labels: np.ndarray, groups: np.ndarray | None) -> dict[str, np.ndarray]:
    """Sorted group value -> indices of its examples."""
    if groups is None:
        raise HFedMoEError("groups: the natural schemes need a group per example, got None")
    groups = np.asarray(groups).astype(str)
    if groups.shape != labels.shape:
        raise HFedMoEError(f"groups: expected shape {labels.shape}, got {groups.shape}")
    names, inverse = np.unique(groups, return_inverse=True)  # names sorted
    return {str(name): np.flatnonzero(inverse == g) for g, name in enumerate(names)}


def _dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
    where: str,
) -> list[np.ndarray]:
    """Per-label Dir(alpha) shares over clients; redraw until each client has >= min_size."""
    num_examples = len(labels)
    if num_clients * min_size > num_examples:
        raise HFedMoEError(
            f"num_clients: {where}{num_clients} clients x min_size {min_size} needs at least "
            f"{num_clients * min_size} examples, got {num_examples}"
        )
    label_idx = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    for _ in range(MAX_DIRICHLET_TRIES):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in label_idx:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_clients, alpha))  # (C,)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for client, piece in enumerate(np.split(idx, cuts)):
                buckets[client].append(piece)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise HFedMoEError(
        f"alpha: {where}no Dirichlet({alpha}) draw in {MAX_DIRICHLET_TRIES} tries gave all "
        f"{num_clients} clients >= min_size {min_size} examples (of {num_examples}); "
        "raise alpha or lower num_clients/min_size"
    )


def _shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label (random order within a label), cut into shards, deal them out at random."""
    if shards_per_client < 1:
        raise HFedMoEError(f"shards_per_client: expected >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise HFedMoEError(
            f"shards_per_client: {num_clients} clients x {shards_per_client} shards = "
            f"{num_shards} shards, expected at most the number of examples {len(labels)}"
        )
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    order = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in order]
