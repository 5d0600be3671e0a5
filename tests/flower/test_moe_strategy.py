"""The reusable HFedMoE Strategy in a user's app (examples/flower-app): Flower's own
Strategy.start loop, ArrayRecords in and out, hostile replies failing one client only."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from hfedmoe.engines.flower.codec import record_to_update
from hfedmoe.engines.flower.moe_strategy import HFedMoE
from hfedmoe.errors import HFedMoEError
from tests.flower.conftest import REPO
from tests.flower.loopback import LoopbackGrid

sys.path.insert(0, str(REPO / "examples" / "flower-app"))
from moeapp.client_app import app as user_client_app  # noqa: E402
from moeapp.task import load_model  # noqa: E402

RUN = {"local-steps": 2, "max-examples": 160, "batch-size": 8}


def grid_of(n: int, **kw) -> LoopbackGrid:
    g = LoopbackGrid(user_client_app, [{"partition-id": i, "num-partitions": n} for i in range(n)])
    for ctx in g.contexts.values():
        ctx.run_config = dict(RUN)
    for k, v in kw.items():
        setattr(g, k, v)
    return g


def test_fedavg_returns_the_weighted_mean_of_the_clients_models():
    mm = load_model(0)
    init = ArrayRecord(mm.model.state_dict())
    grid = grid_of(2)
    strategy = HFedMoE(mm, method="fedavg", min_available_nodes=2)
    result = strategy.start(grid, initial_arrays=init, num_rounds=1, timeout=60,
                            train_config=ConfigRecord({"my-key": 7}))
    sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(sent) == 2 and all(m.content["config"]["my-key"] == 7 and m.content["config"]["server-round"] == 1
                                  for m in sent)
    ups = [record_to_update(r.content) for m, r in grid.pairs if m.metadata.message_type == "train"]
    n = np.array([u.num_examples for u in ups], dtype=np.float64)
    assert n.min() > 0
    got = result.arrays.to_torch_state_dict()
    name = next(k for k in ups[0].dense if "classifier.weight" in k)
    expect = sum(w * u.dense[name].double() for w, u in zip(n, ups)) / n.sum()
    assert torch.allclose(got[name].double(), expect, atol=1e-6)
    assert not torch.equal(got[name], init.to_torch_state_dict()[name])  # training changed it
    emb = next(k for k in got if "word_embeddings" in k)  # frozen (not in trainable): the initial arrays
    assert torch.equal(got[emb], init.to_torch_state_dict()[emb])
    tm = result.train_metrics_clientapp[1]
    assert tm["num-examples"] == int(n.sum()) and tm["num-failed"] == 0
    assert abs(tm["train_loss"] - float((n * [u.metrics["train_loss"] for u in ups]).sum() / n.sum())) < 1e-9


def test_hfedmoe_runs_flowers_loop_with_initial_arrays_and_evaluate_fn_and_survives_a_hostile_reply():
    mm = load_model(0)
    init = mm.model.state_dict()
    init = {k: v.clone() for k, v in init.items()}
    emb = next(k for k in init if "word_embeddings" in k)
    init[emb] += 1.0  # initial arrays that differ from the server's model: they must be the ones used
    calls = []

    def evaluate_fn(rnd, arrays):
        calls.append(rnd)
        return MetricRecord({"emb-sum": float(arrays.to_torch_state_dict()[emb].sum())})

    def hostile(reply):
        if reply.metadata.src_node_id == 1001 and reply.metadata.message_type == "train":
            reply.content.array_records["stats"]["usage"] = ArrayRecord([np.array(["x"])])["0"]
        return reply

    grid = grid_of(3, tamper=hostile)
    strategy = HFedMoE(mm, method="hfedmoe", budget={0: 1, 1: 2, 2: 3}, min_available_nodes=3)
    result = strategy.start(grid, initial_arrays=ArrayRecord(init), num_rounds=2, timeout=60,
                            evaluate_fn=evaluate_fn)
    assert calls == [0, 1, 2]
    assert result.evaluate_metrics_serverapp[2]["emb-sum"] == pytest.approx(float(init[emb].sum()), rel=1e-6)
    assert set(strategy.failed[1]) == {1} and "TypeError" in strategy.failed[1][1]
    assert result.train_metrics_clientapp[2]["num-failed"] == 1
    budgets = {m.content["config"]["hfedmoe.client-id"]: m.content["config"]["hfedmoe.budget"]
               for m in grid.sent if m.metadata.message_type == "train"}
    assert budgets == {0: 1, 1: 2, 2: 3}
    plans = {m.content["config"]["hfedmoe.client-id"]: json.loads(m.content["config"]["hfedmoe.plan"])
             for m in grid.sent if m.metadata.message_type == "train"}
    assert {c: p["budget"] for c, p in plans.items()} == {0: 1, 1: 2, 2: 3}  # per layer, per batch
    assert 0.0 <= result.evaluate_metrics_clientapp[2]["accuracy"] <= 1.0


def test_bad_arguments_are_refused_with_the_field():
    mm = load_model(0)
    with pytest.raises(HFedMoEError, match="method.name"):
        HFedMoE(mm, method="nope")
    with pytest.raises(HFedMoEError, match="method.tau"):
        HFedMoE(mm, method_options={"tau": -1.0})
    s = HFedMoE(mm, budget=9)
    with pytest.raises(HFedMoEError, match=r"budget: expected an integer in \[1, 4\] for client 0, got 9"):
        s._budget_of(0)


def test_a_causal_lm_node_reports_perplexity_and_the_server_pools_the_loss_over_tokens(tmp_path):
    from flwr.clientapp import ClientApp

    from hfedmoe.client.tasks import evaluate_lm
    from hfedmoe.config import load_config
    from hfedmoe.engines.flower.moe_strategy import evaluate_reply
    from hfedmoe.engines.simulation import Simulation

    cfg = load_config(REPO / "configs" / "tiny-lm.toml", ["data.max_examples=120", "data.max_clients=3"])
    sim = Simulation(cfg, tmp_path / "unused")
    mm, tokens, vals = sim.mm, sim.fed.tokens, [c.val_idx for c in sim.fed.clients]
    app = ClientApp()

    @app.evaluate()
    def _evaluate(msg, context):
        return evaluate_reply(msg, mm, tokens, vals[int(context.node_config["partition-id"])], batch_size=4)

    grid = LoopbackGrid(app, [{"partition-id": i} for i in range(len(vals))])
    strategy = HFedMoE(mm, method="hfedmoe", min_available_nodes=len(vals))
    arrays = ArrayRecord(mm.model.state_dict())
    replies = grid.send_and_receive(strategy.configure_evaluate(1, arrays, ConfigRecord({}), grid))
    got = strategy.aggregate_evaluate(1, replies)
    # independent: one evaluation over every node's validation sequences together
    pooled = evaluate_lm(mm, tokens, np.concatenate(vals), 64)
    assert got["loss"] == pytest.approx(pooled["loss"], rel=1e-6)  # float32 batch means: other batching
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-12)
    assert "accuracy" not in got
    counts = [r.content["metrics"]["num-examples"] for r in replies]
    assert counts == [int(evaluate_lm(mm, tokens, v, 64)["tokens"]) for v in vals]  # predicted tokens
