"""Budgeted training goes through transformers' experts-implementation registry.

Inside ``train_only`` the fused experts run the class's own forward, which dispatches on
``config._experts_implementation`` through ``ALL_EXPERTS_FUNCTIONS``. For each implementation
(eager, batched_mm, grouped_mm) the loss and every gradient equal those of the unwrapped model's
plain forward + backward with that implementation; unselected experts get no gradient; a function
registered by the user is the one that computes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, batched_mm_experts_forward

from hfedmoe.moe import wrap
from hfedmoe.moe.catalog import tiny_family_model

# gated (mixtral), transposed + biases + interleaved gate/up (gpt_oss), non-gated (nemotron_h)
FAMILIES = ("mixtral", "gpt_oss", "nemotron_h")
IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")
BUDGET = [1, 4]


def _batch(b=2, s=7):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 99, (b, s), generator=gen)
    return {"input_ids": ids, "labels": ids}


def _set_impl(model, impl):
    """``config._experts_implementation = impl`` on every config the model's modules hold."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(config, "_experts_implementation"):
            config._experts_implementation = impl


def _reference(model, batch):
    """Loss and gradients of a plain forward + backward (every parameter trainable)."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_budgeted_step_equals_the_registered_implementation(family, impl):
    model = tiny_family_model(family).train()
    _set_impl(model, impl)
    batch = _batch()
    plain = copy.deepcopy(model)
    try:
        ref_loss, ref_grads = _reference(plain, batch)
    except (RuntimeError, NotImplementedError) as exc:  # pragma: no cover - depends on torch/CPU
        pytest.skip(f"{impl} does not run here: {exc}")
    adapter = wrap(model)
    leaves = adapter.expert_leaves()
    with adapter.train_only([BUDGET] * adapter.num_layers, mode="detach"):
        loss = model(**batch).loss
        loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
    for info in adapter._layers:
        prefix = f"{info.path}.{info.spec.experts_attr}"
        for e in range(adapter.num_experts):
            for name, leaf in zip(info.param_names, leaves[(info.index, e)]):
                if e not in BUDGET:
                    assert leaf.grad is None, (family, impl, info.index, e, name)
                    continue
                ref = ref_grads[f"{prefix}.{name}"][e]
                if leaf.grad is None:  # a selected expert no token reached: no gradient, not zeros
                    assert torch.count_nonzero(ref) == 0, (family, impl, info.index, e, name)
                    continue
                torch.testing.assert_close(leaf.grad, ref, rtol=1e-4, atol=1e-6)
        for name in info.param_names:  # the fused storage itself never receives a gradient
            assert getattr(info.experts, name).grad is None
    # detach mode keeps every other gradient (routers, attention, embeddings) exactly
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_grad_mode_keeps_the_last_routers_gradient(family):
    model = tiny_family_model(family).train()
    batch = _batch()
    _, ref_grads = _reference(copy.deepcopy(model), batch)
    adapter = wrap(model)
    with adapter.train_only([BUDGET] * adapter.num_layers, mode="no_grad"):
        model(**batch).loss.backward()
    last = adapter._layers[-1]
    for name, p in last.router.named_parameters():
        key = f"{last.path}.{last.spec.router_attr}.{name}"
        torch.testing.assert_close(p.grad, ref_grads[key], rtol=1e-4, atol=1e-6)


def test_a_user_registered_implementation_is_the_one_that_trains():
    calls = []

    def probe(experts, hidden_states, top_k_index, top_k_weights):
        calls.append((experts.num_experts, tuple(experts.gate_up_proj.shape), experts.gate_up_proj.requires_grad))
        return batched_mm_experts_forward(experts, hidden_states, top_k_index, top_k_weights)

    ALL_EXPERTS_FUNCTIONS["hfedmoe_probe"] = probe
    try:
        model = tiny_family_model("mixtral").train()
        _set_impl(model, "hfedmoe_probe")
        adapter = wrap(model)
        with adapter.train_only([BUDGET] * adapter.num_layers):
            model(**_batch()).loss.backward()
    finally:
        del ALL_EXPERTS_FUNCTIONS["hfedmoe_probe"]
    shape = tuple(adapter.get_experts(0)["gate_up_proj"].shape[1:])
    # per layer: the selected experts stacked (gradient), then all experts detached (no gradient)
    assert calls == [(2, (2, *shape), True), (6, (6, *shape), False)] * adapter.num_layers
