"""Generic restricted routing (``hfedmoe.moe.restrict.route_masked``) for the families whose router
has no hand-written route function.

Per family: a restricted forward routes every token of every layer to held experts only, gives
forbidden experts probability 0, and leaves layer 0's choice unchanged for tokens whose
unrestricted top-k already lay inside the subset (layer 0 sees the same input either way); two
budgeted AdamW steps under the restriction move exactly the trained experts (every other expert
bit-identical) with finite gradients. Two router styles are checked against formulas computed here
by hand, and a router the mask cannot reach is refused instead of routed wrongly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import wrap
from hfedmoe.moe.catalog import tiny_family_model
from hfedmoe.moe.families import TRANSFORMERS_FAMILIES
from hfedmoe.moe.restrict import route_masked

MASKED = tuple(f.name for f in TRANSFORMERS_FAMILIES if f.route is route_masked)
# one per router style: top-k on logits, sparsemixer, sigmoid + groups (lifted), soft-capped
# sigmoid + correction bias, softmax without renormalisation
FAST = ("granitemoe", "phimoe", "beam", "laguna", "jamba")
HELD = [0, 2, 4]
FORBIDDEN = [1, 3, 5]


def _params(names):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _batch(seed=0, b=3, s=9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (b, s), generator=gen)
    return {"input_ids": ids, "labels": ids}


def _experts(adapter):
    return {(l, e): adapter.get_expert(l, e) for l in range(adapter.num_layers) for e in range(adapter.num_experts)}


def test_masked_route_covers_the_families_without_a_hand_written_router():
    assert len(MASKED) == 24 and "granitemoe" in MASKED and "mixtral" not in MASKED
    assert all(f.route is not None for f in TRANSFORMERS_FAMILIES)


@pytest.mark.parametrize("family", _params(MASKED))
def test_restricted_forward_routes_only_to_held_experts(family):
    adapter = wrap(tiny_family_model(family))
    batch = _batch()
    with torch.no_grad():
        with adapter.capture_routing() as plain:
            adapter.model(**batch)
        with adapter.restrict_routing([HELD] * adapter.num_layers), adapter.capture_routing() as cap:
            out = adapter.model(**batch).logits
    assert torch.isfinite(out).all()
    for layer in range(adapter.num_layers):
        assert torch.isin(cap.topk_idx[layer], torch.tensor(HELD)).all(), (family, layer)
        assert torch.all(cap.gate_probs[layer][:, FORBIDDEN] == 0)
        torch.testing.assert_close(cap.gate_probs[layer].sum(-1), torch.ones(cap.gate_probs[layer].shape[0]))
    inside = torch.isin(plain.topk_idx[0], torch.tensor(HELD)).all(-1)  # (T,)
    if family != "beam":  # group scores see the masked experts, so a group choice may change
        assert torch.equal(plain.topk_idx[0][inside].sort(-1).values, cap.topk_idx[0][inside].sort(-1).values)


@pytest.mark.parametrize("family", _params(MASKED))
def test_restricted_budgeted_steps_move_only_trained_experts(family):
    adapter = wrap(tiny_family_model(family))
    model = adapter.model.train()
    batch = _batch(seed=1)
    leaves = adapter.expert_leaves()
    opt = torch.optim.AdamW([t for ts in leaves.values() for t in ts], lr=1e-2, weight_decay=0.1)
    router_params = adapter.router_parameters()
    with torch.no_grad(), adapter.restrict_routing([HELD] * adapter.num_layers), \
            adapter.capture_routing() as cap:
        model(**batch)
    hit = []  # per layer, the held experts tokens reach, most used first
    for layer in range(adapter.num_layers):
        counts = torch.bincount(cap.topk_idx[layer].flatten(), minlength=6)
        hit.append([int(e) for e in torch.argsort(counts, descending=True, stable=True) if counts[e] > 0])
    assert all(set(h) <= set(HELD) and len(h) >= 2 for h in hit)
    for budgets in ([h[:2] for h in hit], [h[1:2] for h in hit]):  # 2, then 1 (AdamW momentum)
        start = _experts(adapter)
        opt.zero_grad(set_to_none=True)
        for p in router_params:
            p.grad = None
        with adapter.restrict_routing([HELD] * adapter.num_layers), adapter.train_only(budgets):
            model(**batch).loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in router_params), family
        opt.step()
        for (layer, e), tensors in _experts(adapter).items():
            same = all(torch.equal(tensors[k], start[(layer, e)][k]) for k in tensors)
            assert same != (e in budgets[layer]), (family, layer, e)


def _router_input(adapter):
    """The hidden states ``(T, H)`` reaching layer 0's router (captured by a forward hook)."""
    seen = {}
    router = adapter._layers[0].router
    handle = router.register_forward_pre_hook(lambda m, args: seen.setdefault("h", args[0]))
    with torch.no_grad():
        adapter.model(**_batch())
    handle.remove()
    return seen["h"].reshape(-1, adapter.hidden_size)


def _restricted_router_output(adapter, h):
    router = adapter._layers[0].router
    with torch.no_grad(), adapter.restrict_routing([HELD] * adapter.num_layers):
        return router(h)


def test_jamba_restricted_weights_are_the_softmax_over_held_logits():
    adapter = wrap(tiny_family_model("jamba"))
    h = _router_input(adapter)
    _, weights, idx = _restricted_router_output(adapter, h)
    logits = h @ adapter.router_weight(0).detach().T  # (T, E)
    held = torch.softmax(logits[:, HELD], dim=-1)  # (T, 3): softmax over the held experts only
    want_w, want_pos = held.topk(adapter.top_k, dim=-1)  # no renormalisation in Jamba
    torch.testing.assert_close(idx, torch.tensor(HELD)[want_pos])
    torch.testing.assert_close(weights.float(), want_w)


def test_granite_restricted_weights_are_the_softmax_of_the_top_held_logits():
    adapter = wrap(tiny_family_model("granitemoe"))
    h = _router_input(adapter)
    _, weights, idx = _restricted_router_output(adapter, h)
    logits = h @ adapter.router_weight(0).detach().T  # (T, E)
    top, pos = logits[:, HELD].topk(adapter.top_k, dim=-1)
    torch.testing.assert_close(idx, torch.tensor(HELD)[pos])
    torch.testing.assert_close(weights.float(), torch.softmax(top, dim=-1))


class _SortRouter(nn.Module):
    """A router that chooses by argsort of its weight's row norms: nothing the mask can reach."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.arange(6.0)[:, None].repeat(1, 4))

    def forward(self, hidden_states):
        order = torch.argsort(self.weight.norm(dim=-1), descending=True)[:2]  # experts 5, 4
        idx = order.expand(hidden_states.shape[0], 2)
        return None, torch.ones(hidden_states.shape[0], 2), idx


def test_a_router_the_mask_cannot_reach_is_refused_not_misrouted():
    allowed = torch.zeros(6, dtype=torch.bool)
    allowed[HELD] = True
    with pytest.raises(UnsupportedModelError, match="_SortRouter routed 3 tokens"):
        route_masked(_SortRouter(), (torch.zeros(3, 4),), {}, allowed)
    allowed[5] = True
    allowed[4] = True  # both chosen experts allowed: the output passes unchanged
    _, _, idx = route_masked(_SortRouter(), (torch.zeros(3, 4),), {}, allowed)
    assert idx.tolist() == [[5, 4]] * 3


def test_deepseek_v4_hash_routed_layers_are_refused(monkeypatch):
    # hash-routed layers pick experts from a fixed token-id table: nothing to restrict
    from hfedmoe.moe import catalog

    monkeypatch.setitem(catalog.TINY_OVERRIDES, "deepseek_v4", {"mlp_layer_types": ["hash_moe", "moe"]})
    adapter = wrap(tiny_family_model("deepseek_v4"))
    table = adapter._layers[0].router.tid2eid
    table.copy_(torch.arange(table.numel()).view_as(table) % adapter.num_experts)  # every expert in use
    with torch.no_grad(), adapter.restrict_routing([HELD] * adapter.num_layers):
        with pytest.raises(UnsupportedModelError, match="DeepseekV4HashRouter routed"):
            adapter.model(**_batch())
