"""Data that stays on the node: each node reads only its own partition file, the server only its
test/public file and the sizes and label counts the nodes report; results equal the in-process
engine's bit for bit."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import hfedmoe.engines.flower.clientapp as clientapp
import hfedmoe.engines.simulation as simulation
from hfedmoe.config import load_config
from hfedmoe.engines.flower.serverapp import FlowerRun
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.node_data import load_node_data, load_server_data, write_partitions
from tests.flower.conftest import FAST, TINY
from tests.flower.loopback import LoopbackGrid
from tests.flower.test_engine import assert_same_run


@pytest.fixture(autouse=True)
def fresh_node_caches():
    clientapp._CACHE.clear()
    clientapp._own_data.cache_clear()
    yield
    clientapp._CACHE.clear()
    clientapp._own_data.cache_clear()


def forbid_whole_data(monkeypatch) -> None:
    """From here on nobody (server or node) may load or partition the whole data set."""
    def whole_data(*a, **k):
        raise AssertionError("the whole data set was loaded")

    for mod in (simulation, clientapp):
        monkeypatch.setattr(mod, "load_run_dataset", whole_data)
        monkeypatch.setattr(mod, "build_federation", whole_data)


def server_run_without_client_files(cfg, tmp_path, paths) -> FlowerRun:
    """The ServerApp's run built from ``tmp_path/data/server.npz`` while the clients' files
    ``paths`` are out of reach (moved away, then back for the nodes)."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for p in paths:
        shutil.move(p, hidden / p.name)
    run = FlowerRun(cfg, tmp_path / "flower", server_data=tmp_path / "data" / "server.npz")
    for p in paths:
        shutil.move(hidden / p.name, p)
    return run


def test_partition_files_hold_each_clients_examples_and_the_server_file_none(tmp_path):
    cfg = load_config(TINY, FAST)
    sim = Simulation(cfg, tmp_path / "unused")
    fed = sim.fed
    paths = write_partitions(cfg, tmp_path / "data")
    assert [p.name for p in paths] == [f"client_{c}.npz" for c in range(len(fed.clients))]
    for c, p in zip(fed.clients, paths):
        own = load_node_data(p)
        assert own.partition_id == c.client_id
        want_ids = [fed.tokens.input_ids[i] for i in np.concatenate([c.train_idx, c.val_idx])]
        assert own.tokens.input_ids == want_ids
        assert own.tokens.labels[own.train_idx].tolist() == fed.tokens.labels[c.train_idx].tolist()
        assert own.tokens.labels[own.val_idx].tolist() == fed.tokens.labels[c.val_idx].tolist()
        assert own.label_counts == np.bincount(fed.tokens.labels[c.train_idx], minlength=fed.num_labels).tolist()
    server = load_server_data(tmp_path / "data" / "server.npz", cfg)
    assert server.num_clients == len(fed.clients)
    assert server.tokens.input_ids == [fed.tokens.input_ids[i] for i in np.concatenate([fed.test_idx, fed.public_idx])]
    assert server.tokens.labels.tolist() == fed.tokens.labels[np.concatenate([fed.test_idx, fed.public_idx])].tolist()
    assert len(server.test_idx) == len(fed.test_idx) and len(server.public_idx) == len(fed.public_idx)


def test_a_partition_of_another_config_is_refused_naming_the_field(tmp_path):
    write_partitions(load_config(TINY, FAST), tmp_path / "data")
    other = load_config(TINY, FAST + ["seed=5"])
    with pytest.raises(HFedMoEError, match=r"^server-data: expected partitions written for this run's data config"):
        load_server_data(tmp_path / "data" / "server.npz", other)
    with pytest.raises(HFedMoEError, match=r"^data-path: expected a node-data file"):
        load_node_data(tmp_path / "missing.npz")
    same = load_config(TINY, FAST)  # the task is part of the fingerprint: a causal LM may not read these
    lm = dataclasses.replace(same, model=dataclasses.replace(same.model, task="causal-lm"))
    load_server_data(tmp_path / "data" / "server.npz", same)
    with pytest.raises(HFedMoEError, match=r"^server-data: expected partitions written for this run's data config"):
        load_server_data(tmp_path / "data" / "server.npz", lm)


def test_node_local_data_matches_in_process_bit_for_bit_and_the_server_reads_none(tmp_path, monkeypatch):
    cfg = load_config(TINY, FAST)
    sim = Simulation(cfg, tmp_path / "sim")
    sim.run()
    paths = write_partitions(cfg, tmp_path / "data")

    forbid_whole_data(monkeypatch)
    read: list[str] = []
    monkeypatch.setattr(clientapp, "load_node_data", lambda p: read.append(str(p)) or load_node_data(p))
    run = server_run_without_client_files(load_config(TINY, FAST), tmp_path, paths)
    assert read == []

    # nodes in another order than their partitions: the server follows the files' suggestions
    order = [2, 0, 3, 1]
    grid = LoopbackGrid(clientapp.app, [{"data-path": str(paths[c])} for c in order])
    run.strategy.start(grid)
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
    assert set(read) == {str(p) for p in paths}  # the client files, read by the nodes that hold them
    assert run.strategy.node_of == {c: 1000 + order.index(c) for c in range(4)}
    for c in sim.fed.clients:
        meta = run.client_meta[c.client_id]
        assert meta.num_train == len(c.train_idx) and meta.num_val == len(c.val_idx)
        assert list(meta.label_counts) == np.bincount(sim.fed.tokens.labels[c.train_idx],
                                                      minlength=sim.fed.num_labels).tolist()
    hellos = [r for m, r in grid.pairs if m.metadata.message_type == "query.hello"]
    assert {tuple(sorted(r.content.config_records["hello"])) for r in hellos} == {
        ("label-counts", "num-train", "num-val", "partition-id")}
    assert all(not r.content.array_records for r in hellos)


def test_a_node_with_unusable_metadata_gets_no_client(tmp_path, monkeypatch):
    cfg = load_config(TINY, FAST + ["federation.rounds=1", "engine.min_clients=3"])
    paths = write_partitions(cfg, tmp_path / "data")
    run = FlowerRun(cfg, tmp_path / "f", server_data=tmp_path / "data" / "server.npz")
    grid = LoopbackGrid(clientapp.app, [{"data-path": str(p)} for p in paths])

    def lie(reply):
        if reply.metadata.src_node_id == 1001:
            reply.content.config_records["hello"]["num-train"] = 10 ** 6  # label counts no longer sum to it
        return reply

    grid.tamper, grid.tamper_types = lie, ("query.hello",)
    run.strategy.start(grid)
    assert 1001 not in run.strategy.node_of.values()
    assert sorted(run.strategy.node_of) == [0, 2, 3]  # client 1's node was not used: it fails as offline
    assert 1 not in run.client_meta
    assert run.round == 1
