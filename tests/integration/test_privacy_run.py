"""A run with client-level DP: every upload is clipped and noised, the validation tolerates the
noise, epsilon per round is the accountant's for the worst client's uploads, a resumed DP run keeps
its accounting, and the server cannot regenerate the noise from what it knows (run seed, round,
client id): the noise comes from the client's CSPRNG, so two DP runs of one config differ."""

import math

import pytest
import torch
from safetensors.torch import load_file

from hfedmoe.config import load_config
from hfedmoe.core import privacy
from hfedmoe.core.privacy import _uploaded, epsilon
from hfedmoe.engines import guard as guard_mod
from hfedmoe.engines.simulation import Simulation
from hfedmoe.methods._common import seed_of

from .conftest import FAST, TINY

CLIP, SIGMA = 0.5, 0.3
DP = FAST + ["privacy.enabled=true", f"privacy.clip_norm={CLIP}", f"privacy.noise_multiplier={SIGMA}",
             "federation.rounds=3", "federation.keep_checkpoints=0"]


def _model(d, r):
    return load_file(str(d / "checkpoints" / f"round_{r}" / "model.safetensors"))


def test_dp_run_reports_epsilon_and_resumes_with_its_accounting(tmp_path):
    full = Simulation(load_config(TINY, DP), tmp_path / "full")
    rows = full.run()
    for r in rows[1:]:
        assert r["rejected_clients"] == {}
        assert r["dp_epsilon"] == epsilon(SIGMA, r["round"], 1e-5)  # all 4 clients upload every round
        assert r["dp_preclip_norm_median"] > 0
    assert rows[1]["dp_epsilon"] < rows[2]["dp_epsilon"] < rows[3]["dp_epsilon"]
    clean = Simulation(load_config(TINY, FAST + ["federation.rounds=1"]), tmp_path / "clean")
    clean.run()
    a, b = _model(tmp_path / "full", 1), _model(tmp_path / "clean", 1)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the noise reached the model
    half = Simulation(load_config(TINY, DP), tmp_path / "half")
    half.run(2)
    again = Simulation(load_config(TINY, DP), tmp_path / "half")
    assert again.restore() == 2
    assert again.guard.uploads == {str(c): 2 for c in range(4)}  # the accounting survives the resume
    rows_h = again.run()
    assert rows_h[3]["dp_epsilon"] == rows[3]["dp_epsilon"]
    c, d = _model(tmp_path / "full", 3), _model(tmp_path / "half", 3)
    # same config, same seed: the noise differs (it is not a function of anything the server knows)
    assert any(not torch.equal(c[k], d[k]) for k in c)
    assert all(bool(torch.isfinite(t).all()) for t in d.values() if t.is_floating_point())


def test_the_server_cannot_regenerate_the_noise_from_run_metadata(tmp_path, monkeypatch):
    """The attack that worked when the noise was seeded from (run seed, round, client): regenerate
    it and subtract it from the upload. Now the 'recovered' update is off by the whole noise."""
    captured = []
    real = privacy.privatize_update

    def spy(upd, ref, clip, sigma, generator=None):
        pairs = _uploaded(upd, ref)
        before = [(u.double() - g.double()) for u, g in pairs]
        norm = real(upd, ref, clip, sigma, generator)
        after = [(u.double() - g.double()) for u, g in _uploaded(upd, ref)]
        captured.append((before, after))
        return norm

    monkeypatch.setattr(guard_mod, "privatize_update", spy)
    sim = Simulation(load_config(TINY, DP + ["federation.rounds=1"]), tmp_path)
    sim.run()
    assert len(captured) == 4
    for cid, (before, after) in enumerate(captured):
        change = torch.cat([b.flatten() for b in before])
        upload = torch.cat([a.flatten() for a in after])
        clipped = change * min(1.0, CLIP / float(change.norm()))
        noise = upload - clipped  # what the server would need to know
        # the old derivation, in the old order (privacy._uploaded's)
        gen = torch.Generator().manual_seed(seed_of(0, 1, cid, 17))
        guess = torch.cat([torch.randn(a.shape, generator=gen, dtype=torch.float64).flatten() for a in after])
        guess = guess * (SIGMA * CLIP)
        residual = float((noise - guess).norm())
        # independent Gaussians: |noise - guess| ~ sqrt(2) |noise|; recovered exactly it would be ~1e-7
        assert residual > 1.2 * float(noise.norm()), (cid, residual, float(noise.norm()))
        corr = float(torch.dot(noise, guess) / (noise.norm() * guess.norm()))
        assert abs(corr) < 5 / math.sqrt(noise.numel())
        assert float(noise.std()) == pytest.approx(SIGMA * CLIP, rel=0.05)
