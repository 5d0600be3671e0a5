"""The whole-run ETA exists after the first client updates and follows the measured pace."""

from __future__ import annotations

import pytest

from hfedmoe.cli.progress import RunClock


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_after_first_client_steps_then_from_whole_rounds():
    t = FakeTime()
    clock = RunClock(now=t)
    clock.event({"kind": "round_end", "round": 0, "rounds": 4, "row": {"wall_time_s": 5.0}})
    clock.event({"kind": "round_start", "round": 1, "rounds": 4})
    assert clock.eta_s() is None and clock.text() == ""
    clock.event({"kind": "client_start", "round": 1, "client": 3, "index": 0, "of": 2})
    t.t = 10.0
    clock.event({"kind": "step", "round": 1, "client": 3, "step": 5, "steps": 10, "loss": 0.7})
    # a quarter of round 1 in 10 s: 40 s per round of training, 3.75 rounds left = 150 s,
    # plus the 4 evaluations still to come at round 0's 5 s each
    assert clock.eta_s() == pytest.approx(150.0 + 20.0)
    assert clock.text() == "run ETA 2 min 50 s"
    t.t = 50.0
    clock.event({"kind": "round_end", "round": 1, "rounds": 4, "row": {}})
    # 1 round in 50 s (evaluation included now): 3 rounds left
    assert clock.eta_s() == pytest.approx(150.0)


def test_resumed_run_counts_from_its_own_start_and_flower_events_without_index():
    t = FakeTime()
    clock = RunClock(now=t)
    clock.event({"kind": "round_start", "round": 3, "rounds": 5})
    clock.event({"kind": "client_start", "round": 3, "client": 0})  # Flower: no place in the round
    assert clock.eta_s() is None
    t.t = 30.0
    clock.event({"kind": "round_end", "round": 3, "rounds": 5, "row": {}})
    assert clock.eta_s() == pytest.approx(60.0)
