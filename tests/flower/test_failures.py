"""Failures stay per client: hostile or broken replies, nodes that suggest bad partitions, nodes
that never come; the run goes on while ``engine.min_clients`` clients remain, and the server never
waits without a deadline."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord

from hfedmoe.config import load_config
from hfedmoe.engines.flower.clientapp import app as client_app
from hfedmoe.engines.flower.nodes import assign_clients, wait_for_nodes
from hfedmoe.engines.flower.serverapp import FlowerRun
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from tests.flower.conftest import FAST, TINY
from tests.flower.loopback import LoopbackGrid
from tests.flower.test_engine import assert_same_run, flower_run, rows


def test_assign_clients_honours_valid_distinct_hints_and_fills_the_rest():
    # node 10 claims 2, node 11 also claims 2 (taken), node 12 claims 7 (out of range),
    # node 13 claims "x", node 14 claims True (a bool is not a partition id), node 15 claims 0
    hints = {11: 2, 10: 2, 12: 7, 13: "x", 14: True, 15: 0}
    got = assign_clients(range(4), hints)
    # by node id: 10 -> 2; 15 -> 0; then 11, 12 get the free 1, 3; 13 and 14 get nothing
    assert got == {2: 10, 0: 15, 1: 11, 3: 12}
    assert assign_clients([3], {5: 3, 6: None}) == {3: 5}
    assert assign_clients([], {5: 0}) == {}


class _Nodes:
    def __init__(self, ids):
        self.ids, self.calls = ids, 0

    def get_node_ids(self):
        self.calls += 1
        return self.ids


def test_waiting_for_nodes_has_a_deadline():
    t0 = time.monotonic()
    assert wait_for_nodes(_Nodes([3, 1]), want=4, minimum=2, timeout_s=0.3, poll_s=0.05) == [1, 3]
    assert 0.25 <= time.monotonic() - t0 < 5
    with pytest.raises(HFedMoEError, match=r"engine.min_clients: expected at least 3 connected nodes .* got 2"):
        wait_for_nodes(_Nodes([3, 1]), want=4, minimum=3, timeout_s=0.1, poll_s=0.05)
    g = _Nodes([1, 2, 3, 4])
    assert wait_for_nodes(g, want=4, minimum=1, timeout_s=60) == [1, 2, 3, 4] and g.calls == 1


def test_bad_partition_hints_cannot_abort_start_up(tmp_path, caplog):
    """Duplicate, out-of-range and non-integer suggestions: the server assigns every client, and
    the run is still bit-identical to the in-process engine."""
    one = FAST + ["federation.rounds=1"]
    Simulation(load_config(TINY, one), tmp_path / "sim").run()
    run = FlowerRun(load_config(TINY, one), tmp_path / "flower")
    grid = LoopbackGrid(client_app, [{"partition-id": 1}, {"partition-id": 1}, {"partition-id": 99},
                                     {"partition-id": "three"}])
    with caplog.at_level(logging.WARNING):
        run.strategy.start(grid)
    assert run.strategy.node_of == {1: 1000, 0: 1001, 2: 1002, 3: 1003}
    assert "suggests partition-id 99" in caplog.text and "suggests partition-id 'three'" in caplog.text
    assert_same_run(tmp_path / "sim", tmp_path / "flower")


def test_hostile_hello_and_training_replies_fail_one_client(tmp_path, caplog):
    """A hello reply without its record, a training reply whose statistics are strings (TypeError
    in decoding, not a CodecError) and a reply for a client the node was not asked about."""
    cfg = load_config(TINY, FAST + ["engine.connect_timeout_s=5"])

    def hostile(reply):
        node, kind = reply.metadata.src_node_id, reply.metadata.message_type
        if kind == "query.hello" and node == 1000:
            reply.content.config_records.pop("hello")
        if kind == "train" and node == 1001:
            reply.content.array_records["stats"]["usage"] = Array.from_numpy_ndarray(np.array(["a", "b"]))
        if kind == "train" and node == 1002:
            reply.content["meta"] = ConfigRecord({"client_id": 0, "num_examples": 1})
        return reply

    with caplog.at_level(logging.WARNING):
        run, _ = flower_run(cfg, tmp_path / "f", tamper=hostile, tamper_types=("query.hello", "train"))
    assert sorted(run.strategy.node_of) == [0, 1, 2, 3]
    r1 = rows(tmp_path / "f")[1]
    assert sorted(r1["failed_clients"]) == [c for c in (1, 2) if c in r1["sampled_clients"]]
    reasons = r1["failed_reasons"]
    assert reasons["1"].startswith("malformed reply: TypeError"), reasons["1"]
    assert "client_id 0, expected 2" in reasons["2"]
    assert run.round == 2


def test_a_node_that_never_comes_fails_its_client_and_min_clients_stops_the_run(tmp_path):
    cfg = load_config(TINY, FAST + ["engine.connect_timeout_s=0.5", "engine.min_clients=3"])
    run = FlowerRun(cfg, tmp_path / "f")
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(4)])
    grid.dead.add(1003)
    t0 = time.monotonic()
    run.strategy.start(grid)
    assert time.monotonic() - t0 < 120
    for r in rows(tmp_path / "f")[1:]:
        assert 3 in r["failed_clients"] and r["failed_reasons"]["3"] == "node offline"
        assert math.isnan(r["client_val_accuracy"][3]) if "client_val_accuracy" in r else True
    cfg4 = load_config(TINY, FAST + ["engine.connect_timeout_s=0.5", "engine.min_clients=4"])
    grid4 = LoopbackGrid(client_app, [{"partition-id": i} for i in range(4)])
    grid4.dead.add(1003)
    with pytest.raises(HFedMoEError, match="engine.min_clients: expected at least 4 connected nodes"):
        FlowerRun(cfg4, tmp_path / "g").strategy.start(grid4)


def test_min_clients_stops_the_run_when_nodes_are_lost(tmp_path):
    cfg = load_config(TINY, FAST + ["engine.min_clients=4"])
    run = FlowerRun(cfg, tmp_path / "f")
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(4)])
    grid.on_train = lambda node: grid.dead.add(1002) if node == 1002 else None
    with pytest.raises(HFedMoEError, match="engine.min_clients: expected at least 4 clients with a live node "
                                           "in round 2, got 3"):
        run.strategy.start(grid)
    assert rows(tmp_path / "f")[1]["failed_clients"] == [2]  # round 1 finished without it


def test_a_node_that_joins_later_takes_over_a_free_client(tmp_path):
    cfg = load_config(TINY, FAST + ["engine.connect_timeout_s=0.3"])
    run = FlowerRun(cfg, tmp_path / "f")
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(4)])
    grid.dead.add(1003)
    revived = []

    def revive(node):
        if not revived:
            grid.dead.discard(1003)  # it joins while round 1 trains
            revived.append(node)

    grid.on_train = revive
    run.strategy.start(grid)
    r = rows(tmp_path / "f")
    assert 3 in r[1]["failed_clients"] and 3 not in r[2]["failed_clients"]
    assert run.strategy.node_of[3] == 1003


def test_a_node_silent_at_hello_is_asked_once_and_its_client_fails(tmp_path):
    run = FlowerRun(load_config(TINY, FAST), tmp_path / "f")
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(4)])
    grid.silent.add((1003, "query.hello"))
    run.strategy.start(grid)
    hellos = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "query.hello"]
    assert sorted(hellos) == [1000, 1001, 1002, 1003]  # 1003 asked once, not again every round
    assert 3 not in run.strategy.node_of
    assert all(r["failed_reasons"].get("3") == "node offline" for r in rows(tmp_path / "f")[1:])
