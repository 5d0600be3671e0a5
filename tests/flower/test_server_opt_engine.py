"""Server optimizers, FedProx and the label-skew losses on both engines: the Flower engine gives the
in-process engine's run bit for bit, and a resumed run continues the server optimizer's state."""

from __future__ import annotations

import torch

from hfedmoe.config import load_config
from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint, load_server_opt
from hfedmoe.engines.simulation import Simulation
from tests.flower.conftest import FAST, TINY
from tests.flower.test_engine import assert_same_run, flower_run

OPTIONS = ["federation.server_optimizer=adam", "federation.server_lr=0.01", "train.prox_mu=0.1",
           "train.loss=logit-adjusted"]


def test_flower_matches_in_process_with_server_adam_prox_and_logit_adjustment(tmp_path):
    Simulation(load_config(TINY, FAST + OPTIONS), tmp_path / "sim").run()
    flower_run(load_config(TINY, FAST + OPTIONS), tmp_path / "flower")
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
    a = load_server_opt(tmp_path / "sim" / "checkpoints", 2)
    b = load_server_opt(tmp_path / "flower" / "checkpoints", 2)
    assert a and set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_the_server_optimizer_state(tmp_path):
    opts = FAST + ["federation.server_optimizer=yogi", "train.loss=balanced",
                   "federation.keep_checkpoints=0"]
    Simulation(load_config(TINY, opts), tmp_path / "straight").run()
    Simulation(load_config(TINY, opts), tmp_path / "resumed").run(rounds=1)
    sim = Simulation(load_config(TINY, opts), tmp_path / "resumed")
    assert sim.restore() == 1
    assert sim.server_opt.state  # loaded from the round-1 checkpoint
    sim.run()
    r = complete_rounds(tmp_path / "straight" / "checkpoints")[-1]
    ta, _ = load_checkpoint(tmp_path / "straight" / "checkpoints", r)
    tb, _ = load_checkpoint(tmp_path / "resumed" / "checkpoints", r)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_server_step_changes_the_run_and_none_is_the_default(tmp_path):
    plain = Simulation(load_config(TINY, FAST), tmp_path / "plain")
    assert not plain.server_opt.active
    plain.run()
    Simulation(load_config(TINY, FAST + ["federation.server_optimizer=avgm"]), tmp_path / "avgm").run()
    ta, _ = load_checkpoint(tmp_path / "plain" / "checkpoints", 2)
    tb, _ = load_checkpoint(tmp_path / "avgm" / "checkpoints", 2)
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)  # momentum 0.9 moved round 2 further
    assert not load_server_opt(tmp_path / "plain" / "checkpoints", 2)
