"""A hostile or broken client cannot change the global model: for each kind of bad update the
round's model equals the one aggregated from the honest clients alone, and the rejection is in
the metrics with its reason. An attack that stays inside the optimizer's bound (a plain sign
flip) is accepted, and its effect on the model is within the stated bound."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from hfedmoe.config import load_config
from hfedmoe.core.step_bound import adamw_distance_bounds
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


def _tensors(upd):
    return [t for d in upd.experts.values() for t in d.values()] + list(upd.dense.values()) + [
        t for d in upd.routers.values() for t in d.values()]


def _changes(upd, glob, fn):
    """Replace each uploaded tensor u (global g) by fn(u, g)."""
    for t, g in zip(_tensors(upd), _tensors(glob)):
        t.copy_(fn(t, g))


def _sign_flip(factor):
    return lambda upd, mm, glob: _changes(upd, glob, lambda u, g: g - factor * (u - g))


def _model_replacement(upd, mm, glob):
    # boosted replacement: g + n_clients (x - g) towards a target x a little away from g
    gen = torch.Generator().manual_seed(5)
    _changes(upd, glob, lambda u, g: g + 4 * 0.01 * torch.randn(g.shape, generator=gen))


def _importance(upd, mm):
    upd.importance.fill_(1e30)


KINDS = {
    "nan": (_nan, "non-finite"),
    "inf": (_inf, "non-finite"),
    "scale_1e6": (_scale(1e6), "more than the optimizer can"),
    "wrong_shape": (_wrong_shape, "shape"),
    "wrong_dtype": (_wrong_dtype, "dtype"),
    "expert_id_-1": (_expert_id(-1), "out of range"),
    "expert_id_99": (_expert_id(99), "out of range"),
    "examples_1e12": (_examples, "num_examples"),
    "claims_untrained": (_claims_untrained, "without uploading"),
    "claims_unallowed": (_claims_unallowed, "budget allows"),
    "usage_nan": (_usage_nan, "usage"),
    "router_shape": (_router_shape, "shape"),
    "model_replacement": (_model_replacement, "more than the optimizer can"),
    "minus_8g": (lambda upd, mm, glob: _changes(upd, glob, lambda u, g: -8 * g), "more than the optimizer can"),
    "sign_flip_x10": (_sign_flip(10.0), "more than the optimizer can"),
    "importance_1e30": (_importance, "importance: values outside [0, 1]"),
}


def _run(tmp_path, monkeypatch, rounds, tamper, at_round):
    """``rounds`` rounds; the victim's update is tampered with in round ``at_round`` (an int or a
    set of rounds). ``tamper(upd, mm)`` or ``tamper(upd, mm, glob)`` (glob: the update's global
    counterpart, same structure)."""
    real = simulation.train_client
    sim = Simulation(load_config(TINY, FAST + [f"federation.rounds={rounds}"]), tmp_path)
    at = {at_round} if isinstance(at_round, int) else set(at_round)

    def patched(mm, cid, *args, **kwargs):
        before = {k: v.detach().clone() for k, v in mm.model.state_dict().items()}
        upd = real(mm, cid, *args, **kwargs)
        if cid == VICTIM and sim.round + 1 in at:
            if tamper.__code__.co_argcount == 3:
                now = {k: v.detach().clone() for k, v in mm.model.state_dict().items()}
                mm.model.load_state_dict(before)
                glob = copy.deepcopy(upd)
                glob.experts = {k: mm.get_expert(*k) for k in upd.experts}
                glob.routers = {l: mm.router_state(l) for l in upd.routers}
                dense = mm.dense_named_parameters()
                glob.dense = {n: dense[n].detach().clone() for n in upd.dense}
                mm.model.load_state_dict(now)
                tamper(upd, mm, glob)
            else:
                upd = tamper(upd, mm) or upd
        return upd

    monkeypatch.setattr(simulation, "train_client", patched)
    rows = sim.run()
    monkeypatch.setattr(simulation, "train_client", real)
    return rows, load_file(str(tmp_path / "checkpoints" / f"round_{rounds}" / "model.safetensors"))


def _absent(upd, mm, *glob):
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


def test_a_scaled_update_in_a_later_round_is_rejected(tmp_path, monkeypatch, honest):
    rows, model = _run(tmp_path, monkeypatch, 2, _scale(30.0), 2)
    assert rows[1]["rejected_clients"] == {}
    reason = rows[2]["rejected_clients"][str(VICTIM)]
    assert "more than the optimizer can" in reason
    _, honest_model = honest[2]
    for k in model:
        assert torch.equal(model[k], honest_model[k]), k


def test_a_replayed_round_1_update_is_rejected_in_rounds_2_and_3(tmp_path, monkeypatch, tmp_path_factory):
    saved = {}

    def replay(upd, mm):
        if "first" not in saved:
            saved["first"] = copy.deepcopy(upd)
            return upd
        return copy.deepcopy(saved["first"])

    rows, model = _run(tmp_path, monkeypatch, 3, replay, {1, 2, 3})
    assert rows[1]["rejected_clients"] == {}
    for r in (2, 3):
        assert "stale or replayed" in rows[r]["rejected_clients"][str(VICTIM)]
    # honest-only: the victim's round-1 update, then nothing from it
    _, ref = _run(tmp_path_factory.mktemp("ref"), monkeypatch, 3, _absent, {2, 3})
    for k in model:
        assert torch.equal(model[k], ref[k]), k


def test_a_sign_flip_inside_the_bound_moves_the_model_at_most_twice_the_bound(tmp_path, monkeypatch, honest):
    """Accepted (no rule can tell it from an honest update), but both aggregates are convex
    combinations of updates within the optimizer's per-coordinate bound tau of the global model,
    so they differ by at most 2 tau per weight."""
    rows, model = _run(tmp_path, monkeypatch, 1, _sign_flip(1.0), 1)
    assert rows[1]["rejected_clients"] == {}
    _, honest_model = honest[1]
    cfg = load_config(TINY, FAST)
    tau = adamw_distance_bounds(cfg.train.lr, cfg.train.local_steps, cfg.train.weight_decay,
                                torch.finfo(torch.float32).eps, max(float(t.abs().max()) for t in honest_model.values()
                                                                    if t.is_floating_point()), 0.0, 1).max_abs
    worst = max(float((model[k].double() - honest_model[k].double()).abs().max()) for k in model
                if model[k].is_floating_point())
    assert 0 < worst <= 2 * tau * (1 + 1e-3) + 2 * 1e-6  # global weights up to ~|g| eps of rounding


def test_a_malformed_update_fails_its_client_instead_of_the_run(tmp_path, monkeypatch, honest):
    """Experts as a list: the upload's size cannot even be computed; the client fails the round."""
    def as_list(upd, mm):
        upd.experts = list(upd.experts.values())

    rows, model = _run(tmp_path, monkeypatch, 1, as_list, 1)
    assert rows[1]["failed_clients"] == [VICTIM]
    assert rows[1]["failed_reasons"][str(VICTIM)].startswith("malformed update: AttributeError")
    _, honest_model = honest[1]
    for k in model:
        assert torch.equal(model[k], honest_model[k]), k
