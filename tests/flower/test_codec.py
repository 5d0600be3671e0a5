"""The record codec: bit-exact round trips of real updates and models; malformed records refused."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from hfedmoe.client import TrainPlan
from hfedmoe.engines.flower.codec import (
    CodecError,
    load_model_record,
    model_to_record,
    plan_from_json,
    plan_to_json,
    record_to_update,
    update_to_record,
    wire_bytes,
)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_update_round_trip_is_bit_exact(trained):
    _, updates = trained
    for u in updates:
        assert u.experts, "the fixture must train some experts"
        v = record_to_update(update_to_record(u))
        assert (v.client_id, v.num_examples) == (u.client_id, u.num_examples)
        assert v.nonce == u.nonce
        assert set(v.experts) == set(u.experts)
        for k in u.experts:
            assert set(v.experts[k]) == set(u.experts[k])
            assert all(_same(u.experts[k][n], v.experts[k][n]) for n in u.experts[k])
        assert set(v.routers) == set(u.routers)
        assert all(_same(u.routers[l][n], v.routers[l][n]) for l in u.routers for n in u.routers[l])
        assert set(v.dense) == set(u.dense) and all(_same(u.dense[n], v.dense[n]) for n in u.dense)
        for name in ("usage", "importance", "trained", "selected_counts"):
            assert _same(getattr(u, name), getattr(v, name)), name
        assert v.metrics == u.metrics
        assert v.upload_bytes() == u.upload_bytes()


def test_only_trained_experts_travel(trained):
    _, updates = trained
    u = updates[0]
    rd = update_to_record(u)
    keys = {tuple(int(x) for x in k.split("/")[:2]) for k in rd.array_records["experts"]}
    assert keys == {tuple(x) for x in u.trained.nonzero().tolist()}
    assert len(keys) < u.trained.numel()  # budget 1 of 4: a subset


def test_bfloat16_round_trip():
    from hfedmoe.client import ClientUpdate

    t = torch.randn(3, 5).to(torch.bfloat16)
    u = ClientUpdate(0, 4, {(0, 1): {"w": t}}, {}, {"head": t.clone()}, torch.rand(1, 2), torch.rand(1, 2),
                     torch.tensor([[False, True]]), torch.tensor([[0, 3]]), {"train_loss": 0.5})
    v = record_to_update(update_to_record(u))
    assert _same(v.experts[(0, 1)]["w"], t) and _same(v.dense["head"], t)


@pytest.mark.parametrize("breakage, reason", [
    (lambda rd: rd.pop("stats"), "missing ArrayRecord 'stats'"),
    (lambda rd: rd.array_records["stats"].pop("usage"), "stats: missing ['usage']"),
    (lambda rd: rd.array_records["experts"].__setitem__(
        "x/0/w", next(iter(rd.array_records["experts"].values()))), "expected an integer index"),
    (lambda rd: rd.array_records["routers"].__setitem__(
        "nolayer", next(iter(rd.array_records["routers"].values()))), "expected keys 'layer/name'"),
    (lambda rd: rd.__setitem__("meta", ConfigRecord({"client_id": "a", "num_examples": 1})), "meta.client_id"),
])
def test_malformed_update_is_refused_with_a_reason(trained, breakage, reason):
    rd = update_to_record(trained[1][0])
    breakage(rd)
    with pytest.raises(CodecError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        record_to_update(rd)


def test_model_round_trip_full_and_held(trained):
    sim, _ = trained
    mm = sim.mm
    state = {k: v.clone() for k, v in mm.model.state_dict().items()}
    rec = model_to_record(mm)
    with torch.no_grad():
        for p in mm.model.parameters():
            p.add_(1.0)
    assert load_model_record(mm, rec) == [(l, e) for l in range(mm.num_layers) for e in range(mm.num_experts)]
    assert all(torch.equal(state[k], v) for k, v in mm.model.state_dict().items())
    held = [[0, 2], None] if mm.num_layers == 2 else [[0, 2]] * mm.num_layers
    part = model_to_record(mm, held)
    assert {k.split("/")[1:3] == ["0", "1"] for k in part if k.startswith("expert/")} == {False}
    assert wire_bytes(part) < wire_bytes(rec)
    assert load_model_record(mm, part)[:2] == [(0, 0), (0, 2)]


def test_model_record_missing_dense_tensor_is_refused(trained):
    sim, _ = trained
    rec = model_to_record(sim.mm)
    rec.pop(next(k for k in rec if k.startswith("dense/")))
    with pytest.raises(CodecError, match="non-expert tensors differ"):
        load_model_record(sim.mm, rec)
    bad = ArrayRecord()
    bad["weird/key"] = next(iter(rec.values()))
    with pytest.raises(CodecError, match="unexpected key 'weird/key'"):
        load_model_record(sim.mm, bad)


def test_plan_round_trip():
    def sel(layer, routing):
        return [0]

    plan = TrainPlan(selector=sel, restrict=[[0, 1], None], train_routers=False)
    back = plan_from_json(plan_to_json(plan), TrainPlan(selector=sel))
    assert back.selector is sel and back.restrict == [[0, 1], None] and back.train_routers is False
    static = TrainPlan(static_subsets=[[1], [2, 3]])
    assert plan_from_json(plan_to_json(static), None).static_subsets == [[1], [2, 3]]
    with pytest.raises(CodecError, match="needs a selector"):
        plan_from_json(plan_to_json(plan), None)
    with pytest.raises(CodecError, match="malformed"):
        plan_from_json("{not json", None)
