"""Node-local data for a causal LM: each node holds only its own laid-out sequences (loss masks
included) and reports its validation perplexity when the server asks; the server holds the test
and held-out sequences. The run equals the in-process engine's bit for bit."""

from __future__ import annotations

import math

import numpy as np

import hfedmoe.assets.corpora as corpora
import hfedmoe.engines.flower.clientapp as clientapp
from hfedmoe.config import load_config
from hfedmoe.engines.flower.serverapp import FlowerRun
from hfedmoe.engines.simulation import Simulation
from hfedmoe.federation.node_data import load_node_data, load_server_data, write_partitions
from tests.flower.conftest import REPO
from tests.flower.loopback import LoopbackGrid
from tests.flower.test_engine import assert_same_run, rows
from tests.flower.test_node_data import forbid_whole_data, server_run_without_client_files
from tests.flower.test_node_data import fresh_node_caches  # noqa: F401 (autouse: every test starts with no node state)

TINY_LM = REPO / "configs" / "tiny-lm.toml"
# seconds per run: 120 tweets, the 4 largest outlets (one client each), 2 local steps, 2 rounds
FAST_LM = ["data.max_examples=120", "data.max_clients=4", "train.local_steps=2", "federation.rounds=2",
           "data.heldout_max_examples=4"]


def _same_sequences(a, ia, b, ib) -> None:
    """Sequences ``ia`` of tokens ``a`` equal sequences ``ib`` of ``b``: ids and loss masks."""
    assert [a.input_ids[int(i)] for i in ia] == [b.input_ids[int(i)] for i in ib]
    assert [a.loss_masks[int(i)] for i in ia] == [b.loss_masks[int(i)] for i in ib]


def test_lm_partition_files_hold_each_clients_sequences_and_the_server_the_test_and_heldout(tmp_path):
    cfg = load_config(TINY_LM, FAST_LM)
    fed = Simulation(cfg, tmp_path / "unused").fed
    assert fed.tokens.loss_masks is not None and fed.heldout is not None  # what the files must carry
    paths = write_partitions(cfg, tmp_path / "data")
    assert len(paths) == len(fed.clients) >= 2
    for c, p in zip(fed.clients, paths):
        own = load_node_data(p)
        assert own.partition_id == c.client_id and len(own.tokens) == len(c.train_idx) + len(c.val_idx)
        _same_sequences(own.tokens, own.train_idx, fed.tokens, c.train_idx)
        _same_sequences(own.tokens, own.val_idx, fed.tokens, c.val_idx)
    server = load_server_data(tmp_path / "data" / "server.npz", cfg)
    assert len(server.tokens) == len(fed.test_idx) + len(fed.public_idx)  # no client sequence
    _same_sequences(server.tokens, server.test_idx, fed.tokens, fed.test_idx)
    _same_sequences(server.tokens, server.public_idx, fed.tokens, fed.public_idx)
    n = len(fed.heldout)
    _same_sequences(server.heldout, np.arange(n), fed.heldout, np.arange(n))
    assert server.layout == fed.layout


def test_lm_node_local_data_matches_in_process_and_the_server_reads_no_client_data(tmp_path, monkeypatch):
    cfg = load_config(TINY_LM, FAST_LM)
    Simulation(cfg, tmp_path / "sim").run()
    paths = write_partitions(cfg, tmp_path / "data")
    forbid_whole_data(monkeypatch)

    def heldout_corpus(*a, **k):
        raise AssertionError("the held-out corpus was loaded")

    monkeypatch.setattr(corpora, "load_wikitext2", heldout_corpus)
    run = server_run_without_client_files(cfg, tmp_path, paths)
    assert all(len(c.val_idx) == 0 for c in run.fed.clients)  # the server holds no client sequence

    grid = LoopbackGrid(clientapp.app, [{"data-path": str(p)} for p in reversed(paths)])
    run.strategy.start(grid)
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
    want = rows(tmp_path / "sim")
    for row in want:  # the compared fields are there and real: per-client, mean, max, test, held-out
        assert len(row["client_val_perplexity"]) == len(paths)
        assert all(math.isfinite(p) and p > 1 for p in row["client_val_perplexity"])
        assert row["client_val_perplexity_max"] == max(row["client_val_perplexity"])
        assert math.isfinite(row["heldout_perplexity"]) and math.isfinite(row["test_perplexity"])
    evals = [(m, r) for m, r in grid.pairs if m.metadata.message_type == "evaluate"]
    assert len(evals) == len(want) * len(paths)  # every row's per-client values came from the nodes
    assert {tuple(sorted(r.content.metric_records["eval"])) for _, r in evals} == {("client_id", "perplexity")}


def test_a_lying_or_malformed_perplexity_reply_counts_as_missing(tmp_path):
    cfg = load_config(TINY_LM, FAST_LM + ["federation.rounds=1"])
    Simulation(cfg, tmp_path / "sim").run()
    paths = write_partitions(cfg, tmp_path / "data")
    run = FlowerRun(cfg, tmp_path / "f", server_data=tmp_path / "data" / "server.npz")
    grid = LoopbackGrid(clientapp.app, [{"data-path": str(p)} for p in paths])

    def lie(reply):
        rec = reply.content.metric_records["eval"]
        if reply.metadata.src_node_id == 1000:
            rec["perplexity"] = 0.5  # below 1: no perplexity
        elif reply.metadata.src_node_id == 1001:
            rec["accuracy"] = rec.pop("perplexity")  # not the value asked for
        return reply

    grid.tamper, grid.tamper_types = lie, ("evaluate",)
    run.strategy.start(grid)
    want, got = rows(tmp_path / "sim")[-1], rows(tmp_path / "f")[-1]
    lied = {run.strategy.node_of.get(c): c for c in range(len(paths))}
    bad = {lied[1000], lied[1001]}
    for c, (w, g) in enumerate(zip(want["client_val_perplexity"], got["client_val_perplexity"])):
        assert math.isnan(g) if c in bad else g == w
    finite = [p for c, p in enumerate(want["client_val_perplexity"]) if c not in bad]
    assert got["client_val_perplexity_max"] == max(finite)
    assert got["test_perplexity"] == want["test_perplexity"] and got["heldout_perplexity"] == want["heldout_perplexity"]


def test_lm_flower_run_without_node_files_also_asks_the_nodes_and_matches_in_process(tmp_path):
    cfg = load_config(TINY_LM, FAST_LM + ["federation.rounds=1"])
    Simulation(cfg, tmp_path / "sim").run()
    run = FlowerRun(cfg, tmp_path / "flower")  # the server partitions the data itself (flower-sim)
    grid = LoopbackGrid(clientapp.app, [{"partition-id": i} for i in range(len(run.fed.clients))])
    run.strategy.start(grid)
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
    assert sum(m.metadata.message_type == "evaluate" for m, _ in grid.pairs) == 2 * len(run.fed.clients)
