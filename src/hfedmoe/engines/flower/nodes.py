"""Which Flower node holds which client: waiting for nodes (always with a deadline) and the
server's assignment of client ids (partitions) to nodes.

The server decides; a node only *suggests* its partition (node config ``partition-id``, sent back
in its hello reply). A suggestion that is not an integer, out of range, or already taken is
ignored (logged) and the node gets the lowest free client id instead, so no node can abort the
start-up or take a client another node holds. Device profiles always come from the run config
(``clients.profiles``), never from a node. A node that holds its own data (node config
``data-path``) also reports its sizes and label counts (:class:`NodeMeta`), nothing else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)


def wait_for_nodes(grid: Any, want: int, minimum: int, timeout_s: float, poll_s: float = 1.0) -> list[int]:
    """Connected node ids (sorted) once ``want`` are connected or ``timeout_s`` has passed;
    :class:`HFedMoEError` (naming ``engine.min_clients``) when fewer than ``minimum`` are."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        left = deadline - time.monotonic()
        if len(nodes) >= want or left <= 0:
            break
        log.info("flower: waiting for nodes: %d of %d connected (%.0f s left)", len(nodes), want, left)
        time.sleep(min(poll_s, left))
    if len(nodes) < minimum:
        raise HFedMoEError(
            f"engine.min_clients: expected at least {minimum} connected nodes within engine.connect_timeout_s = "
            f"{timeout_s:g} s, got {len(nodes)} (start the SuperNodes, or lower engine.min_clients)")
    if len(nodes) < want:
        log.warning("flower: %d of %d nodes connected after %g s; going on without the rest", len(nodes), want,
                    timeout_s)
    return nodes


def partition_hint(reply: Any) -> Any:
    """What a node's hello reply says its ``partition-id`` is (None: an error reply or no value).
    Any type may come back; :func:`assign_clients` decides whether it is usable."""
    try:
        if reply.has_error():
            return None
        return reply.content.config_records["hello"].get("partition-id")
    except Exception:  # noqa: BLE001 (a malformed reply is a node without a suggestion)
        return None


@dataclass(frozen=True)
class NodeMeta:
    """What a node holding its own data tells the server about it (metadata only)."""

    num_train: int
    num_val: int
    label_counts: tuple[int, ...]  # (num_labels,) training examples per class


def node_meta(reply: Any, num_labels: int) -> NodeMeta | str:
    """The sizes and label counts in a node's hello reply, or why they are unusable."""
    try:
        rec = reply.content.config_records["hello"]
        n_train, n_val, counts = rec.get("num-train"), rec.get("num-val"), rec.get("label-counts")
    except Exception as exc:  # noqa: BLE001 (a malformed reply is a node without metadata)
        return f"no metadata ({type(exc).__name__})"
    ints = [n_train, n_val, *(counts if isinstance(counts, list) else [None])]
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ints):
        return f"num-train {n_train!r}, num-val {n_val!r}, label-counts {counts!r}: expected integers >= 0"
    if len(counts) != num_labels or sum(counts) != n_train:
        return f"label-counts {counts!r}: expected {num_labels} counts summing to num-train {n_train}"
    return NodeMeta(n_train, n_val, tuple(counts))


def assign_clients(free: Iterable[int], hints: dict[int, Any]) -> dict[int, int]:
    """``client id -> node id`` for the ``free`` clients and the nodes in ``hints`` (node id ->
    suggested partition). Nodes in id order: a node whose suggestion is a free client gets it;
    then the remaining nodes get the remaining free clients, lowest first. Nodes beyond the free
    clients get nothing."""
    open_ = sorted(set(int(c) for c in free))
    out: dict[int, int] = {}
    later = []
    for node in sorted(hints):
        h = hints[node]
        if isinstance(h, int) and not isinstance(h, bool) and h in open_:
            out[h] = node
            open_.remove(h)
        else:
            if h is not None:
                log.warning("flower: node %s suggests partition-id %r (not a free client id in %s); "
                            "the server assigns one", node, h, open_)
            later.append(node)
    for node, cid in zip(later, open_):
        out[cid] = node
    return out


def num_clients(cfg: Any) -> int:
    """How many clients (so: nodes) a run config federates: ``data.num_clients`` for the partitions
    that make exactly that many; otherwise (natural ones depend on the dataset's groups) by
    splitting its data exactly as the run does (no model, no tokenising)."""
    if cfg.data.partition in ("dirichlet", "iid", "shards"):
        return int(cfg.data.num_clients)
    from hfedmoe.federation.data import split_clients

    return len(split_clients(cfg).parts)
