"""The Flower engine against the in-process engine, without Ray: a loopback Grid delivers the
strategy's Messages to the real ClientApp in this process. Same code, same derived seeds, CPU:
global weights and metrics must be bit-identical (wall time and wire sizes aside)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from hfedmoe.config import load_config
from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint
from hfedmoe.engines.flower.clientapp import app as client_app
from hfedmoe.engines.flower.serverapp import FlowerRun
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from tests.flower.conftest import FAST, TINY
from tests.flower.loopback import LoopbackGrid

ENGINE_ONLY = ("wall_time_s", "wire_download_bytes", "wire_upload_bytes", "failed_reasons")


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        keys = (set(x) | set(y)) - set(ENGINE_ONLY)
        diff = [k for k in keys if not same_value(x.get(k), y.get(k))]
        assert not diff, f"round {x['round']}: {diff}"
    r = complete_rounds(a / "checkpoints")[-1]
    assert complete_rounds(b / "checkpoints")[-1] == r
    ta, sa = load_checkpoint(a / "checkpoints", r)
    tb, sb = load_checkpoint(b / "checkpoints", r)
    assert set(ta) == set(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta), "global weights differ"
    assert sa["method_state"] == sb["method_state"]


def flower_run(cfg, out: Path, **grid_kw) -> tuple[FlowerRun, LoopbackGrid]:
    run = FlowerRun(cfg, out)
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(len(run.fed.clients))])
    for k, v in grid_kw.items():
        setattr(grid, k, v)
    run.strategy.start(grid)
    return run, grid


@pytest.mark.parametrize("method", ["hfedmoe", "hfedmoe-restrict"] + [
    pytest.param(m, marks=pytest.mark.slow) for m in ("fedavg", "flex-moe", "random", "fedmoe")])
def test_flower_matches_in_process_bit_for_bit(tmp_path, method):
    cfg = load_config(TINY, FAST + [f"method.name={method}"])
    Simulation(cfg, tmp_path / "sim").run()
    flower_run(load_config(TINY, FAST + [f"method.name={method}"]), tmp_path / "flower")
    assert_same_run(tmp_path / "sim", tmp_path / "flower")


def test_malformed_reply_fails_only_that_client(tmp_path, caplog):
    cfg = load_config(TINY, FAST)

    def drop_stats(reply):
        if reply.metadata.src_node_id == 1001:  # partition 1
            reply.content.array_records["stats"].pop("usage")
        return reply

    with caplog.at_level(logging.WARNING):
        run, _ = flower_run(cfg, tmp_path / "f", tamper=drop_stats)
    r1 = rows(tmp_path / "f")[1]
    assert r1["failed_clients"] == [1]
    assert sorted(int(c) for c in r1["client_trained"]) == [c for c in r1["sampled_clients"] if c != 1]
    assert "client 1 failed: malformed reply: stats: missing ['usage']" in caplog.text
    assert run.round == 2


def test_invalid_update_is_rejected_by_validation(tmp_path, caplog):
    cfg = load_config(TINY, FAST)

    def nan_expert(reply):
        if reply.metadata.src_node_id == 1002:
            rec = reply.content.array_records["experts"]
            k = next(iter(rec))
            import numpy as np
            from flwr.app import Array

            a = rec[k].numpy().copy()
            a.flat[0] = np.nan
            rec[k] = Array.from_numpy_ndarray(a)
        return reply

    with caplog.at_level(logging.WARNING):
        flower_run(cfg, tmp_path / "f", tamper=nan_expert)
    assert 2 in rows(tmp_path / "f")[1]["failed_clients"]
    assert "client 2 failed: invalid update: expert" in caplog.text and "non-finite" in caplog.text


def test_a_replayed_reply_is_rejected_as_stale(tmp_path, caplog):
    """The server's per-round nonce travels in the train message and must come back in the reply:
    node 1's round-1 reply replayed in round 2 is rejected."""
    cfg = load_config(TINY, FAST)
    saved = {}

    def replay(reply):
        if reply.metadata.src_node_id == 1001 and not reply.has_error() and "meta" in reply.content.config_records:
            if "first" not in saved:
                saved["first"] = reply.content
            else:
                reply.content = saved["first"]
        return reply

    with caplog.at_level(logging.WARNING):
        flower_run(cfg, tmp_path / "f", tamper=replay)
    r = rows(tmp_path / "f")
    assert 1 not in r[1]["failed_clients"] and 1 in r[2]["failed_clients"]
    assert "client 1 failed: invalid update: nonce: not this round's (a stale or replayed update)" in caplog.text


def test_a_node_lost_mid_round_does_not_stop_the_run(tmp_path):
    cfg = load_config(TINY, FAST)
    state = {"killed": False}
    grid_ref = {}

    def kill_partition_3(node):
        if node == 1003 and not state["killed"]:
            grid_ref["g"].dead.add(1003)  # dies after receiving its round-1 model, before replying
            state["killed"] = True

    run = FlowerRun(cfg, tmp_path / "f")
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(len(run.fed.clients))])
    grid.on_train, grid_ref["g"] = kill_partition_3, grid
    run.strategy.start(grid)
    r = rows(tmp_path / "f")
    assert r[1]["failed_clients"] == [3] and r[2]["failed_clients"] == [3]
    assert "3" not in r[1]["client_trained"] and len(r[1]["client_trained"]) == 3
    assert math.isnan(r[2]["client_val_accuracy"][3]) and not math.isnan(r[2]["client_val_accuracy"][0])
    assert run.round == 2


def test_restrict_sends_held_experts_and_receives_trained_ones(tmp_path):
    cfg = load_config(TINY, FAST + ["method.name=hfedmoe-restrict", "clients.fixed_budgets=[1]"])
    run, grid = flower_run(cfg, tmp_path / "f")
    E, L = run.mm.num_experts, run.mm.num_layers
    train_msgs = [(m, r) for m, r in grid.pairs if m.metadata.message_type == "train"]
    assert train_msgs
    for m, reply in train_msgs:
        plan = json.loads(m.content.config_records["config"]["plan"])
        held = {(l, e) for l, h in enumerate(plan["restrict"]) for e in h}
        sent = {(int(k.split("/")[1]), int(k.split("/")[2])) for k in m.content.array_records["model"]
                if k.startswith("expert/")}
        assert sent == held and len(held) < L * E
        got = {(int(k.split("/")[0]), int(k.split("/")[1])) for k in reply.content.array_records["experts"]}
        assert got <= held
    r1 = rows(tmp_path / "f")[1]
    flower_run(load_config(TINY, FAST + ["method.name=fedavg"]), tmp_path / "g")
    f1 = rows(tmp_path / "g")[1]
    both = set(r1["wire_download_bytes"]) & set(f1["wire_download_bytes"])  # fedavg fails clients that do not fit
    assert both
    for c in both:
        assert r1["wire_download_bytes"][c] < f1["wire_download_bytes"][c]
        assert r1["wire_upload_bytes"][c] < f1["wire_upload_bytes"][c]


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    flower_run(load_config(TINY, FAST), tmp_path / "full")
    flower_run(load_config(TINY, FAST + ["federation.rounds=1"]), tmp_path / "part")
    cfg = load_config(TINY, FAST)
    run = FlowerRun(cfg, tmp_path / "part")
    with pytest.raises(HFedMoEError, match=r"federation.rounds \(1 -> 2\)"):
        run.restore()  # the rounds differ from the checkpoint's config: only when allowed
    assert run.restore(allow_change={"federation.rounds"}) == 1
    grid = LoopbackGrid(client_app, [{"partition-id": i} for i in range(len(run.fed.clients))])
    run.strategy.start(grid)
    assert_same_run(tmp_path / "full", tmp_path / "part")


@pytest.mark.parametrize("extra", [
    ["method.name=random", "method.budget_scope=model", "clients.fixed_budgets=[1]"],
    ["method.name=oracle", "method.budget_scope=model", "clients.fixed_budgets=[1]", "data.public_fraction=0.25",
     "model.head_warmup_steps=10", 'train.trainable=["experts", "routers"]'],
    ["method.name=random-round", "clients.fixed_budgets=[1, 2]"],
    ["method.name=fft-moe", "model.name=tiny-bert", "model.adapter=moe", "model.adapter_rank=4",
     'train.trainable=["experts", "routers", "head"]'],
], ids=["random-model-scope", "oracle-model-scope-head-warmup", "random-round", "fft-moe-on-adapters"])
def test_flower_matches_in_process_with_model_scope_and_head_warmup(tmp_path, extra):
    """Cross-layer selection plans rebuilt on the node, and the server's warmed (fixed) head sent
    with the model: both engines still train the same weights."""
    Simulation(load_config(TINY, FAST + extra), tmp_path / "sim").run()
    flower_run(load_config(TINY, FAST + extra), tmp_path / "flower")
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
