"""Client faults (injected crashes, stragglers, silent clients, real exceptions) cost only the
faulted clients: the round completes with the others and the metrics say who failed and why."""

import logging

import pytest
import torch
from safetensors.torch import load_file

from hfedmoe.config import load_config
from hfedmoe.engines import simulation
from hfedmoe.engines.simulation import Simulation

from .conftest import FAST, TINY

REASON_OF = {"crash": "crash (injected)", "straggler": "straggler (injected)", "no_answer": "no answer (injected)"}


def _sim(path, *extra, rounds=4):
    return Simulation(load_config(TINY, FAST + [f"federation.rounds={rounds}", *extra]), path)


def test_thirty_percent_faults_the_run_completes_and_records_who_and_why(tmp_path):
    sim = _sim(tmp_path / "run", "faults.rate=0.3")
    rows = sim.run()
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    faulted = 0
    for r in rows[1:]:
        expected = {c: sim.guard.fault(r["round"], c) for c in r["sampled_clients"]}
        hit = {c: k for c, k in expected.items() if k is not None}
        faulted += len(hit)
        assert sorted(r["failed_clients"]) == sorted(hit)
        for c, kind in hit.items():
            assert r["failed_reasons"][str(c)].startswith(REASON_OF[kind])
        # the others trained and were aggregated
        assert sorted(int(c) for c in r["client_trained"]) == sorted(set(r["sampled_clients"]) - set(hit))
    assert faulted > 0
    assert 0.0 <= rows[-1]["test_accuracy"] <= 1.0


def test_fault_draws_follow_the_rate(tmp_path):
    sim = _sim(tmp_path / "run", "faults.rate=0.3", rounds=1)
    draws = [sim.guard.fault(r, c) for r in range(1, 501) for c in range(4)]
    rate = sum(d is not None for d in draws) / len(draws)
    assert abs(rate - 0.3) < 0.04
    kinds = {k for k in draws if k}
    assert kinds == {"crash", "straggler", "no_answer"}


def test_a_round_where_every_client_crashes_leaves_the_model_unchanged(tmp_path):
    sim = _sim(tmp_path / "run", "faults.rate=1.0", "faults.kinds=['crash']", rounds=1)
    before = {k: v.clone() for k, v in sim.mm.model.state_dict().items()}
    rows = sim.run()
    assert sorted(rows[1]["failed_clients"]) == rows[1]["sampled_clients"]
    after = sim.mm.model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_an_exception_in_one_client_is_caught_logged_and_counted(tmp_path, monkeypatch, caplog):
    real = simulation.train_client

    def broken(mm, cid, *a, **k):
        if cid == 2:
            raise ValueError("bad batch")
        return real(mm, cid, *a, **k)

    monkeypatch.setattr(simulation, "train_client", broken)
    caplog.set_level(logging.WARNING, logger="hfedmoe.engines.guard")  # the CLI tests may have raised the root level
    rows = _sim(tmp_path / "run", rounds=2).run()
    for r in rows[1:]:
        assert r["failed_reasons"] == {"2": "exception: ValueError: bad batch"}
        assert "2" not in r["client_trained"] and len(r["client_trained"]) == 3
    assert "client 2 raised ValueError: bad batch" in caplog.text


def test_when_every_client_raises_the_run_stops(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise ValueError("systematic")

    monkeypatch.setattr(simulation, "train_client", broken)
    with pytest.raises(ValueError, match="systematic"):
        _sim(tmp_path / "run", rounds=1).run()


def test_clients_past_the_round_deadline_are_dropped_as_stragglers(tmp_path):
    rows = _sim(tmp_path / "run", "faults.round_deadline_s=1e-9", rounds=1).run()
    r = rows[1]
    assert sorted(r["failed_clients"]) == r["sampled_clients"]
    assert all(v.startswith("straggler:") and "> round deadline" in v for v in r["failed_reasons"].values())
    assert r["round_sim_time_s"] == pytest.approx(1e-9)


def test_a_faulted_run_resumes_bit_identically(tmp_path):
    full = _sim(tmp_path / "full", "faults.rate=0.3", rounds=3)
    full.run()
    half = _sim(tmp_path / "half", "faults.rate=0.3", rounds=3)
    half.run(1)
    again = _sim(tmp_path / "half", "faults.rate=0.3", rounds=3)
    assert again.restore() == 1
    again.run()
    a = load_file(str(tmp_path / "full" / "checkpoints" / "round_3" / "model.safetensors"))
    b = load_file(str(tmp_path / "half" / "checkpoints" / "round_3" / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
