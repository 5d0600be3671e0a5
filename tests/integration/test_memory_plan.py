"""`hfedmoe plan`: the cost model's per-client peak next to the machine's memory, refusing a run
that cannot fit; gradient checkpointing trains exactly like the plain backward."""

import pytest
import torch
from typer.testing import CliRunner

from hfedmoe.cli.app import app
from hfedmoe.cli.plan import plan_lines
from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from hfedmoe.federation import memory
from hfedmoe.federation.budgeting import cost_model

from .conftest import FAST, TINY

GB = 2**30


def test_plan_lists_every_client_from_the_cost_model_and_fits(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "machine_memory", lambda device_type="cpu": (64 * GB, 32 * GB))
    cfg = load_config(TINY, FAST)
    lines, code = plan_lines(cfg, TINY)
    assert code == 0
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 4  # the tiny preset's four clients
    sim = Simulation(cfg, tmp_path)
    cost = cost_model(sim.mm, cfg)
    for row, b in zip(rows, sim.budgets):
        copies = 3 * b.budget * cost.num_layers * cost.trainable_expert_params * 4  # stack or foreach temp, first value, heap
        expected = (cost.training_bytes(b.budget) + copies) / GB  # the cost model at the client's budget
        assert float(row.split()[-2]) == pytest.approx(expected, abs=1e-3)
    assert lines[-1].startswith("memory: predicted peak") and "of 64.0 GB (32.0 GB available)" in lines[-1]


def test_plan_warns_when_tight_and_refuses_with_exit_2_when_it_cannot_fit(monkeypatch):
    cfg = load_config(TINY, FAST)
    monkeypatch.setattr(memory, "machine_memory", lambda device_type="cpu": (64 * GB, 1024))
    lines, code = plan_lines(cfg, TINY)
    assert code == 1 and lines[-1].startswith("warning: predicted peak is above")
    monkeypatch.setattr(memory, "machine_memory", lambda device_type="cpu": (2048, 1024))
    result = CliRunner().invoke(app, ["plan", "--config", str(TINY), *sum((["--set", s] for s in FAST), [])])
    assert result.exit_code == 2
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert "plan: predicted peak" in err and "exceeds this machine's" in err and len(err.strip().splitlines()) == 1


def test_gradient_checkpointing_trains_exactly_like_plain_backward(tmp_path):
    sets = FAST + ["federation.rounds=1", "model.attention_dropout=0.0", "train.dropout=0.0"]
    states = []
    for flag in ("false", "true"):
        sim = Simulation(load_config(TINY, sets + [f"train.gradient_checkpointing={flag}"]), tmp_path / flag)
        assert any(getattr(m, "gradient_checkpointing", False) for m in sim.mm.model.modules()) == (flag == "true")
        rows = sim.run()
        states.append((rows[-1]["train_loss"], sim.mm.model.state_dict()))
    (loss0, s0), (loss1, s1) = states
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k], rtol=1e-5, atol=1e-6)
