"""A selector may answer with a device mask ``(E,)``: ``train_only`` then reads it together with the
layer's dispatch sizes, one device->host read per MoE layer in the adapter's code, for every
family (fused eager loops, the MoEfied BERT, Switch's per-expert modules, LoRA experts), and trains
exactly what the same choice given as host indices trains."""

from __future__ import annotations

import copy

import pytest
import torch

from hfedmoe.core.selection import routed_pair_counts
from hfedmoe.moe import wrap
from hfedmoe.moe.build import TINY_FAMILIES, tiny_model

from ..device_check import DeviceCheck
from .test_moe_adapter import make_batch, run

VARIANTS = [*TINY_FAMILIES, "mixtral+lora"]


def _adapter(variant: str):
    family = variant.split("+")[0]
    mm = wrap(tiny_model(family))
    if variant.endswith("+lora"):
        from hfedmoe.moe.lora_model import enable_lora

        mm = enable_lora(mm, 2, 4.0)
        with torch.no_grad():  # B = 0 at init: give every LoRA product a value
            for (_, e), leaves in mm.expert_leaves().items():
                for t in leaves:
                    t.add_(0.01 * (e + 1))
    return family, mm


def _mask_selector(num_experts: int, chosen: dict):
    """The most-routed expert of each layer (lowest index on ties), as a device mask: no read."""

    def selector(layer: int, routing) -> torch.Tensor:
        counts = routed_pair_counts(routing.topk_idx, routing.token_mask, num_experts)  # (E,)
        best = torch.argmax(counts)  # first maximum: the lowest index
        chosen[layer] = best
        return torch.arange(num_experts, device=counts.device) == best  # (E,) bool

    return selector


def _step(mm, batch, selector):
    leaves = mm.expert_leaves()
    mm.model.zero_grad(set_to_none=True)
    for ts in leaves.values():
        for t in ts:
            t.grad = None
    with mm.train_only(selector) as ctx:
        loss = run(mm.model, batch).loss
        loss.backward()
    selected = {layer: ctx.selected[layer].tolist() for layer in range(mm.num_layers)}
    grads = {k: [None if t.grad is None else t.grad.clone() for t in ts] for k, ts in leaves.items()}
    return loss.detach(), selected, grads


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pad", [0, 2])
def test_a_device_mask_selection_reads_once_per_layer_and_trains_what_host_indices_train(variant, pad):
    family, mm = _adapter(variant)
    mm.model.train()
    batch = make_batch(family, pad=pad)
    twin = copy.deepcopy(mm.model)
    chosen: dict = {}
    with DeviceCheck(mm.model) as dc:
        device = next(mm.model.parameters()).device  # the simulated device
        for ts in mm.expert_leaves().values():  # leaves built before the checker: views of device tensors
            for t in ts:
                dc.tag(t)
        on_device = {k: v.to(device) for k, v in batch.items()}
        loss, selected, grads = _step(mm, on_device, _mask_selector(mm.num_experts, chosen))
    moe_reads = sum(n for site, n in dc.read_sites.items() if site.startswith("moe/"))
    assert dc.findings == []
    assert moe_reads == mm.num_layers, dict(dc.read_sites)  # one per layer: sizes + selection together

    mm2 = twin._hfedmoe_adapter
    host = {layer: [int(best)] for layer, best in chosen.items()}  # the same choice, as host indices
    loss2, selected2, grads2 = _step(mm2, batch, lambda layer, routing: host[layer])
    assert selected == selected2 == host
    assert torch.equal(loss, loss2)
    for key, gs in grads.items():
        layer, e = key
        for g, g2 in zip(gs, grads2[key]):
            if e not in host[layer]:
                assert g is None and g2 is None, key  # unselected: no gradient at all
            else:
                assert (g is None) == (g2 is None) and (g is None or torch.equal(g, g2)), key


@pytest.mark.parametrize("variant", ["mixtral", "minilm_moe", "switch", "mixtral+lora"])
def test_unselected_experts_stay_bit_identical_after_adamw_steps_with_device_masks(variant):
    family, mm = _adapter(variant)
    mm.model.train()
    leaves = mm.expert_leaves()
    opt = torch.optim.AdamW([t for ts in leaves.values() for t in ts], lr=1e-2, weight_decay=0.1)
    for seed in (0, 1):
        batch = make_batch(family, seed=seed, pad=1)
        before = {k: [t.detach().clone() for t in ts] for k, ts in leaves.items()}
        chosen: dict = {}
        opt.zero_grad(set_to_none=True)
        with mm.train_only(_mask_selector(mm.num_experts, chosen)) as ctx:
            run(mm.model, batch).loss.backward()
        for k, ts in leaves.items():  # eviction as the client does: only this step's experts
            if k[1] not in ctx.selected[k[0]].tolist():
                for t in ts:
                    opt.state.pop(t, None)
        opt.step()
        for (layer, e), ts in leaves.items():
            unchanged = all(torch.equal(a, b) for a, b in zip(before[(layer, e)], ts))
            assert unchanged == (e != int(chosen[layer])), (seed, layer, e)


def test_the_selected_experts_gradients_are_views_of_one_stacked_gradient_per_layer():
    """What ``hfedmoe plan`` counts: the stand-in stack's gradient is no copy beside the experts'
    gradients (they are views of it), so a trained expert's gradient is counted once."""
    mm = wrap(tiny_model("mixtral"))
    mm.model.train()
    with mm.train_only([None] * mm.num_layers):
        run(mm.model, make_batch("mixtral")).loss.backward()
    for layer in range(mm.num_layers):
        grads = [t.grad for e in range(mm.num_experts) for t in mm.expert_leaves()[(layer, e)] if t.grad is not None]
        assert len(grads) >= 2 * len(mm.expert_param_names(layer))  # at least two experts reached
        by_name = {}
        for g in grads:
            by_name.setdefault(g.shape, set()).add(g.untyped_storage().data_ptr())
        assert all(len(ptrs) == 1 for ptrs in by_name.values())  # one buffer per stacked tensor
