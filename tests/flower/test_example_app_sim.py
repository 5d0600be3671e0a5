"""The example app on Flower's Simulation Engine through `flwr run` and a local simulation
connection (flwr 1.42's supported path; the deprecated `run_simulation` is not used): the run
finishes, the server saves the final model, and no process it started is left. Slow (Ray and a
background SuperLink start)."""

from __future__ import annotations

import importlib.util
import uuid

import pytest
import torch

from tests.flower.conftest import REPO, marked

pytestmark = pytest.mark.slow


def test_example_app_runs_with_flwr_run_on_a_local_simulation_connection(tmp_path, monkeypatch):
    mark = uuid.uuid4().hex
    monkeypatch.setenv("HFEDMOE_TEST_MARK", mark)  # inherited by every process the run starts
    spec = importlib.util.spec_from_file_location("run_local_sim", REPO / "examples" / "flower-app" / "run_local_sim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    save = tmp_path / "final_model.pt"
    r = mod.run_local_sim(tmp_path, f'num-server-rounds=1 max-examples=120 local-steps=1 save-to="{save}"',
                          num_supernodes=2, timeout_s=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert save.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    state = torch.load(save)
    assert any(k.endswith("gate.weight") or "router" in k or "gate" in k for k in state) and len(state) > 10
    assert not marked(mark), "processes left running"
