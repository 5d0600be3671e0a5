"""A run with client-level DP: every upload is clipped and noised, the validation tolerates the
noise, epsilon per round is the accountant's for the worst client's uploads, and a resumed DP
run repeats exactly (the noise is seeded)."""

import torch
from safetensors.torch import load_file

from hfedmoe.config import load_config
from hfedmoe.core.privacy import epsilon
from hfedmoe.engines.simulation import Simulation

from .conftest import FAST, TINY

DP = FAST + ["privacy.enabled=true", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0.3", "federation.rounds=3",
      "federation.keep_checkpoints=0"]  # round 1 is compared below


def test_dp_run_reports_epsilon_and_resumes_bit_identically(tmp_path):
    full = Simulation(load_config(TINY, DP), tmp_path / "full")
    rows = full.run()
    for r in rows[1:]:
        assert r["rejected_clients"] == {}
        assert r["dp_epsilon"] == epsilon(0.3, r["round"], 1e-5)  # all 4 clients upload every round
        assert r["dp_preclip_norm_median"] > 0
    assert rows[1]["dp_epsilon"] < rows[2]["dp_epsilon"] < rows[3]["dp_epsilon"]
    clean = Simulation(load_config(TINY, FAST + ["federation.rounds=1"]), tmp_path / "clean")
    clean.run()
    a = load_file(str(tmp_path / "full" / "checkpoints" / "round_1" / "model.safetensors"))
    b = load_file(str(tmp_path / "clean" / "checkpoints" / "round_1" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the noise reached the model
    half = Simulation(load_config(TINY, DP), tmp_path / "half")
    half.run(2)
    again = Simulation(load_config(TINY, DP), tmp_path / "half")
    assert again.restore() == 2
    again.run()
    c = load_file(str(tmp_path / "full" / "checkpoints" / "round_3" / "model.safetensors"))
    d = load_file(str(tmp_path / "half" / "checkpoints" / "round_3" / "model.safetensors"))
    for k in c:
        assert torch.equal(c[k], d[k]), k
