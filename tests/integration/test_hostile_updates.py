"""A hostile or broken client cannot change the global model: for each kind of bad update the
round's model equals the one aggregated from the honest clients alone, and the rejection is in
the metrics with its reason."""

import math

import pytest
import torch
from safetensors.torch import load_file

from hfedmoe.config import load_config
from hfedmoe.engines import simulation
from hfedmoe.engines.simulation import Simulation

from .conftest import FAST, TINY

VICTIM = 1  # budget 1 on the tiny preset (client 3 holds the full model)


def _first_tensor(upd):
    if upd.experts:
        (key, tensors), = list(upd.experts.items())[:1]
        return upd.experts[key], next(iter(tensors))
    return upd.dense, next(iter(upd.dense))


def _nan(upd, mm):
    d, name = _first_tensor(upd)
    d[name].view(-1)[0] = float("nan")


def _inf(upd, mm):
    name = next(iter(upd.dense))
    upd.dense[name].view(-1)[-1] = float("inf")


def _scale(factor):
    def f(upd, mm):
        for t in [t for d in upd.experts.values() for t in d.values()] + list(upd.dense.values()) + [
                t for d in upd.routers.values() for t in d.values()]:
            t.mul_(factor)
    return f


def _wrong_shape(upd, mm):
    d, name = _first_tensor(upd)
    d[name] = d[name][..., :-1].clone()


def _wrong_dtype(upd, mm):
    name = next(iter(upd.dense))
    upd.dense[name] = upd.dense[name].double()


def _expert_id(e):
    def f(upd, mm):
        key = next(iter(upd.experts))
        upd.experts[(key[0], e)] = upd.experts.pop(key)
    return f


def _examples(upd, mm):
    upd.num_examples = 10**12


def _claims_untrained(upd, mm):
    upd.trained[:] = True
    upd.selected_counts.clamp_(min=1)


def _claims_unallowed(upd, mm):
    # uploads every expert, claimed trained once each: more than budget 1 x 2 steps per layer
    for l in range(mm.num_layers):
        for e in range(mm.num_experts):
            upd.experts[(l, e)] = mm.get_expert(l, e)
    upd.trained[:] = True
    upd.selected_counts.clamp_(min=1)


def _usage_nan(upd, mm):
    upd.usage[0, 0] = float("nan")


def _router_shape(upd, mm):
    name = next(iter(upd.routers[0]))
    upd.routers[0][name] = torch.zeros(3, 3)


KINDS = {
    "nan": (_nan, "non-finite"),
    "inf": (_inf, "non-finite"),
    "scale_1e6": (_scale(1e6), "update norm"),
    "wrong_shape": (_wrong_shape, "shape"),
    "wrong_dtype": (_wrong_dtype, "dtype"),
    "expert_id_-1": (_expert_id(-1), "out of range"),
    "expert_id_99": (_expert_id(99), "out of range"),
    "examples_1e12": (_examples, "num_examples"),
    "claims_untrained": (_claims_untrained, "without uploading"),
    "claims_unallowed": (_claims_unallowed, "budget allows"),
    "usage_nan": (_usage_nan, "usage"),
    "router_shape": (_router_shape, "shape"),
}


def _run(tmp_path, monkeypatch, rounds, tamper, at_round):
    real = simulation.train_client
    sim = Simulation(load_config(TINY, FAST + [f"federation.rounds={rounds}"]), tmp_path)

    def patched(mm, cid, *args, **kwargs):
        upd = real(mm, cid, *args, **kwargs)
        if cid == VICTIM and sim.round + 1 == at_round:
            tamper(upd, mm)
        return upd

    monkeypatch.setattr(simulation, "train_client", patched)
    rows = sim.run()
    monkeypatch.setattr(simulation, "train_client", real)
    return rows, load_file(str(tmp_path / "checkpoints" / f"round_{rounds}" / "model.safetensors"))


def _absent(upd, mm):
    raise RuntimeError("client left")


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """The models aggregated without the victim (its training raises), for rounds 1 and 2."""
    mp = pytest.MonkeyPatch()
    try:
        out = {r: _run(tmp_path_factory.mktemp(f"honest{r}"), mp, r, _absent, r) for r in (1, 2)}
    finally:
        mp.undo()
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_hostile_update_is_rejected_and_model_equals_honest_only(kind, tmp_path, monkeypatch, honest):
    tamper, needle = KINDS[kind]
    rows, model = _run(tmp_path, monkeypatch, 1, tamper, 1)
    row = rows[-1]
    assert list(row["rejected_clients"]) == [str(VICTIM)], row["rejected_clients"]
    assert needle in row["rejected_clients"][str(VICTIM)]
    assert VICTIM not in row["failed_clients"]
    honest_rows, honest_model = honest[1]
    assert str(VICTIM) in honest_rows[-1]["failed_reasons"]
    assert model.keys() == honest_model.keys()
    for k in model:
        assert torch.equal(model[k], honest_model[k]), k
    assert all(math.isfinite(float(t.abs().max())) for t in model.values())


def test_a_moderately_scaled_update_in_a_later_round_hits_the_median_rule(tmp_path, monkeypatch, honest):
    rows, model = _run(tmp_path, monkeypatch, 2, _scale(30.0), 2)
    assert rows[1]["rejected_clients"] == {}
    reason = rows[2]["rejected_clients"][str(VICTIM)]
    assert "median of previous rounds" in reason
    _, honest_model = honest[2]
    for k in model:
        assert torch.equal(model[k], honest_model[k]), k
