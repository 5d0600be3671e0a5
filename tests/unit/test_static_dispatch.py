"""``train_only(dispatch="static")``: slots of exactly ``budget`` experts and grouped_mm, no
device->host read in the forward and one per step, training what the per-layer loop trains.

Exactness: bit for bit where every expert row is 16-byte aligned and the experts have no bias (the
tiny Mixtral: rows of 36 and 20 float32). Elsewhere grouped_mm runs on zero-padded 16-byte-aligned
views (rows of 10 or 14 float32) and the MoEfied BERT's expert bias gradient is summed by an
index_add instead of a column sum: the same sums in another order, so float32 rounding (relative
1e-5 allowed; measured: at most 1.5e-8 absolute on the experts' gradients, 1.2e-7 on the
dense ones)."""

from __future__ import annotations

import copy

import pytest
import torch

from hfedmoe.core.selection import routed_pair_counts, selection_mask
from hfedmoe.moe import static_dispatch, wrap
from hfedmoe.moe.build import TINY_FAMILIES, tiny_model

from ..device_check import DeviceCheck
from .test_device_side_selection import _adapter
from .test_moe_adapter import make_batch, run

FUSED = [f for f in TINY_FAMILIES if f != "switch"]
BUDGET = 2


def _exact(mm) -> bool:
    """Bit-for-bit expected: aligned rows (no padded views) and no expert bias, or the per-layer
    path (Switch, LoRA experts)."""
    from hfedmoe.moe.lora_model import is_lora

    info = mm._layers[0]
    if is_lora(mm) or not static_dispatch.supports(info.experts, info.param_names):
        return True
    tensors = [getattr(info.experts, n) for n in info.param_names]
    return all(t.shape[-1] * t.element_size() % 16 == 0 for t in tensors) and not any(
        n.endswith("_bias") for n in info.param_names)


def _selector(num_experts: int, budget: int = BUDGET):
    """The ``budget`` most-routed experts of each layer, as a device mask (as per-batch plans)."""

    def selector(layer: int, routing) -> torch.Tensor:
        counts = routed_pair_counts(routing.topk_idx, routing.token_mask, num_experts).float()
        return selection_mask(counts, counts > 0, budget)

    return selector


def _step(mm, batch, dispatch: str, mode: str = "no_grad", slots: int = BUDGET, budget: int = BUDGET):
    leaves = mm.expert_leaves()
    mm.model.zero_grad(set_to_none=True)
    for ts in leaves.values():
        for t in ts:
            t.grad = None
    with mm.train_only(_selector(mm.num_experts, budget), mode=mode, dispatch=dispatch, slots=slots) as ctx:
        loss = run(mm.model, batch).loss
        loss.backward()
        selected = {layer: ctx.selected[layer].tolist() for layer in range(mm.num_layers)}
    grads = {k: [None if t.grad is None else t.grad.clone() for t in ts] for k, ts in leaves.items()}
    dense = {n: p.grad.clone() for n, p in mm.model.named_parameters() if p.grad is not None}
    return loss.detach(), selected, grads, dense


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> bool:
    return torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def _assert_trains_alike(mm, twin, batch, mode="no_grad", slots=BUDGET, budget=BUDGET):
    loss, selected, grads, dense = _step(mm, batch, "static", mode, slots, budget)
    loss2, selected2, grads2, dense2 = _step(twin, batch, "loop", mode, slots, budget)
    exact = _exact(mm)
    assert selected == selected2
    assert _same(loss, loss2, exact)
    for (layer, e), gs in grads.items():
        for g, g2 in zip(gs, grads2[(layer, e)]):
            assert (g is None) == (g2 is None), (layer, e)
            if e not in selected[layer]:
                assert g is None, (layer, e)  # unselected: no gradient at all
            if g is not None:
                assert _same(g, g2, exact), (layer, e, (g - g2).abs().max())
    assert dense.keys() == dense2.keys()
    assert all(_same(dense[n], dense2[n], exact) for n in dense)
    return selected, grads


@pytest.mark.parametrize("family", FUSED)
@pytest.mark.parametrize("pad", [0, 2])
def test_static_dispatch_trains_what_the_loop_trains(family, pad):
    mm = wrap(tiny_model(family))
    mm.model.train()
    twin = copy.deepcopy(mm.model)._hfedmoe_adapter
    selected, grads = _assert_trains_alike(mm, twin, make_batch(family, pad=pad))
    assert any(g is not None for gs in grads.values() for g in gs)  # something was trained
    assert all(len(s) <= BUDGET for s in selected.values())


@pytest.mark.parametrize("family", ["mixtral", "minilm_moe"])
def test_static_dispatch_trains_what_the_loop_trains_in_detach_mode(family):
    mm = wrap(tiny_model(family))
    mm.model.train()
    _assert_trains_alike(mm, copy.deepcopy(mm.model)._hfedmoe_adapter, make_batch(family, pad=1), mode="detach")


def test_the_tiny_mixtral_is_the_bit_exact_case_and_padded_layouts_are_not():
    """What the tolerance above rests on: which tiny layouts take padded views."""
    assert _exact(wrap(tiny_model("mixtral")))
    assert not _exact(wrap(tiny_model("qwen2_moe"))) and not _exact(wrap(tiny_model("minilm_moe")))


@pytest.mark.parametrize("family", ["mixtral", "minilm_moe", "olmoe"])
def test_static_dispatch_reads_nothing_in_the_forward_and_once_per_step(family):
    mm = wrap(tiny_model(family))
    mm.model.train()
    batch = make_batch(family, pad=2)
    with DeviceCheck(mm.model) as dc:
        device = next(mm.model.parameters()).device
        for ts in mm.expert_leaves().values():
            for t in ts:
                dc.tag(t)
        on_device = {k: v.to(device) for k, v in batch.items()}
        with mm.train_only(_selector(mm.num_experts), dispatch="static", slots=BUDGET) as ctx:
            loss = run(mm.model, on_device).loss
            forward_reads = sum(n for site, n in dc.read_sites.items() if site.startswith("moe/"))
            loss.backward()
            _ = ctx.selected
        step_reads = sum(n for site, n in dc.read_sites.items() if site.startswith("moe/"))
    assert dc.findings == []
    assert mm.num_layers >= 2
    assert forward_reads == 0 and step_reads == 1, dict(dc.read_sites)  # every layer in one read


def test_only_the_slots_hold_gradient_memory_and_unselected_experts_stay_bit_identical():
    mm = wrap(tiny_model("mixtral"))
    mm.model.train()
    leaves = mm.expert_leaves()
    opt = torch.optim.AdamW([t for ts in leaves.values() for t in ts], lr=1e-2, weight_decay=0.1)
    expert_bytes = sum(t.numel() * t.element_size() for t in leaves[(0, 0)])
    for seed in (0, 1, 2):
        before = {k: [t.detach().clone() for t in ts] for k, ts in leaves.items()}
        opt.zero_grad(set_to_none=True)
        with mm.train_only(_selector(mm.num_experts, 1), dispatch="static", slots=1) as ctx:
            run(mm.model, make_batch("mixtral", seed=seed, pad=1)).loss.backward()
            chosen = {layer: ctx.selected[layer].tolist() for layer in range(mm.num_layers)}
        for layer in range(mm.num_layers):  # one slot: the gradients live in one expert's worth of memory
            grads = [t.grad for e in range(mm.num_experts) for t in leaves[(layer, e)] if t.grad is not None]
            assert sum(g.untyped_storage().nbytes() for g in grads) == expert_bytes
        for k, ts in leaves.items():  # eviction as the client does: only this step's experts
            if k[1] not in chosen[k[0]]:
                assert all(t.grad is None for t in ts)
                for t in ts:
                    opt.state.pop(t, None)
        opt.step()
        for (layer, e), ts in leaves.items():
            unchanged = all(torch.equal(a, b) for a, b in zip(before[(layer, e)], ts))
            assert unchanged == (e not in chosen[layer]), (seed, layer, e)


@pytest.mark.parametrize("family", ["mixtral", "minilm_moe"])
def test_slots_beyond_the_choice_hold_unchosen_experts_that_are_never_trained(family):
    mm = wrap(tiny_model(family))
    mm.model.train()
    selected, grads = _assert_trains_alike(mm, copy.deepcopy(mm.model)._hfedmoe_adapter, make_batch(family),
                                           slots=3, budget=1)
    assert all(len(s) == 1 for s in selected.values())
    trained = {k for k, gs in grads.items() if gs[0] is not None}
    assert trained == {(layer, e) for layer, s in selected.items() for e in s}


def test_a_choice_larger_than_the_slots_is_an_error():
    mm = wrap(tiny_model("mixtral"))
    mm.model.train()
    with pytest.raises(ValueError, match="more than its 1 slots|with 1 slots"):
        with mm.train_only(_selector(mm.num_experts, 2), dispatch="static", slots=1) as ctx:
            run(mm.model, make_batch("mixtral")).loss.backward()
            _ = ctx.selected


def test_host_choices_and_no_budget_use_the_slots_of_the_choice():
    """Host subsets (static plans, model-scope budgets, the oracle's all experts) need no slot
    count; a device mask without one loops (one read per layer)."""
    mm = wrap(tiny_model("mixtral"))
    mm.model.train()
    twin = copy.deepcopy(mm.model)._hfedmoe_adapter
    batch = make_batch("mixtral")
    for subsets in ([[0, 3], None], [[], [1]]):
        out = {}
        for name, adapter, dispatch in (("static", mm, "static"), ("loop", twin, "loop")):
            adapter.model.zero_grad(set_to_none=True)
            for ts in adapter.expert_leaves().values():
                for t in ts:
                    t.grad = None
            with adapter.train_only(subsets, dispatch=dispatch):
                run(adapter.model, batch).loss.backward()
            out[name] = {k: [t.grad for t in ts] for k, ts in adapter.expert_leaves().items()}
        for k, gs in out["static"].items():
            for g, g2 in zip(gs, out["loop"][k]):
                assert (g is None) == (g2 is None) and (g is None or torch.equal(g, g2)), (subsets, k)
    with DeviceCheck(mm.model) as dc:
        with mm.train_only(_selector(mm.num_experts), dispatch="static", slots=None):
            run(mm.model, {k: v.to(next(mm.model.parameters()).device) for k, v in batch.items()})
    assert sum(n for site, n in dc.read_sites.items() if site.startswith("moe/hooks")) == mm.num_layers


@pytest.mark.parametrize("family", ["mixtral", "minilm_moe"])
def test_gradient_checkpointing_trains_what_the_plain_loop_trains(family, monkeypatch):
    """The recomputed forward gathers fresh slots whose leaves get no gradient (non-reentrant
    checkpointing, as ``train.gradient_checkpointing`` sets it up, sends it to the first
    forward's)."""
    mm = wrap(tiny_model(family))
    mm.model.train()
    twin = copy.deepcopy(mm.model)._hfedmoe_adapter
    mm.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    forward = static_dispatch.static_experts_forward
    monkeypatch.setattr(static_dispatch, "static_experts_forward", lambda *a: calls.append(1) or forward(*a))
    _assert_trains_alike(mm, twin, make_batch(family, pad=1))
    assert len(calls) == 2 * mm.num_layers  # each layer's forward ran again in backward


@pytest.mark.parametrize("variant", ["switch", "mixtral+lora"])
def test_switch_and_lora_experts_keep_the_per_layer_path(variant):
    family, mm = _adapter(variant)
    mm.model.train()
    twin = copy.deepcopy(mm.model)._hfedmoe_adapter
    batch = make_batch(family, pad=1)
    with DeviceCheck(mm.model) as dc:
        on_device = {k: v.to(next(mm.model.parameters()).device) for k, v in batch.items()}
        with mm.train_only(_selector(mm.num_experts), dispatch="static", slots=BUDGET):
            run(mm.model, on_device).loss.backward()
    assert sum(n for site, n in dc.read_sites.items() if site.startswith("moe/")) == mm.num_layers
    assert not static_dispatch.supports(mm._layers[0].experts, mm._layers[0].param_names) or variant.endswith("lora")
    mm.model.zero_grad(set_to_none=True)
    for ts in mm.expert_leaves().values():
        for t in ts:
            t.grad = None
    _assert_trains_alike(mm, twin, batch)


def test_bfloat16_autocast_computes_the_slots_in_bfloat16_close_to_the_loop():
    mm = wrap(tiny_model("mixtral"))
    mm.model.train()
    twin = copy.deepcopy(mm.model)._hfedmoe_adapter
    batch = make_batch("mixtral")
    out = {}
    for name, adapter in (("static", mm), ("loop", twin)):
        with torch.autocast("cpu", dtype=torch.bfloat16), adapter.train_only(
                _selector(adapter.num_experts), dispatch=name, slots=BUDGET) as ctx:
            loss = run(adapter.model, batch).loss
            loss.backward()
            chosen = {layer: ctx.selected[layer].tolist() for layer in range(adapter.num_layers)}
        grads = {k: ts[0].grad for k, ts in adapter.expert_leaves().items() if ts[0].grad is not None}
        out[name] = (loss.detach().float(), chosen, grads)
    assert out["static"][1] == out["loop"][1]
    assert torch.allclose(out["static"][0], out["loop"][0], rtol=2e-2)
    assert out["static"][2].keys() == out["loop"][2].keys() and out["static"][2]
    for k, g in out["static"][2].items():
        assert g.dtype == torch.float32  # fp32 master leaves get fp32 gradients
        g2 = out["loop"][2][k]
        assert (g - g2).norm() <= 5e-2 * g2.norm() + 1e-6, k


def test_auto_dispatch_is_static_only_on_cuda_in_bfloat16_and_the_field_is_validated():
    from hfedmoe.client.train import resolve_dispatch
    from hfedmoe.config import load_config
    from hfedmoe.errors import HFedMoEError

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_dispatch("auto", cuda, "bfloat16") == "static"
    assert resolve_dispatch("auto", cuda, "float32") == "loop"  # grouped_mm's fp32 CUDA fallback reads offsets
    assert resolve_dispatch("auto", cpu, "bfloat16") == "loop"  # the faster on the CPU (RESULTS.md)
    assert resolve_dispatch("static", cpu, "float32") == "static"
    assert load_config("configs/tiny.toml", ["train.dispatch=static"]).train.dispatch == "static"
    with pytest.raises(HFedMoEError, match=r"train\.dispatch: expected one of auto \| loop \| static, got 'grouped'"):
        load_config("configs/tiny.toml", ["train.dispatch=grouped"])


def test_the_slot_leaves_are_freed_after_the_step_without_a_garbage_collection(monkeypatch):
    """Their gradient hooks hold no reference back to them (a cycle would keep each step's
    gathered slots, b experts per layer, alive until Python's cycle collector ran)."""
    import gc
    import weakref

    mm = wrap(tiny_model("mixtral"))
    mm.model.train()
    refs = []
    forward = static_dispatch.static_experts_forward

    def recording(*args):
        out, record = forward(*args)
        refs.extend(weakref.ref(t) for t in record.leaves)
        return out, record

    monkeypatch.setattr(static_dispatch, "static_experts_forward", recording)
    gc.collect()
    gc.disable()
    try:
        with mm.train_only(_selector(mm.num_experts), dispatch="static", slots=BUDGET) as ctx:
            run(mm.model, make_batch("mixtral")).loss.backward()
            _ = ctx.selected
        del ctx
        assert refs and all(r() is None for r in refs)
    finally:
        gc.enable()
    assert any(t.grad is not None for ts in mm.expert_leaves().values() for t in ts)
