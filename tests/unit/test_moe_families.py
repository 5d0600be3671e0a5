"""Every transformers MoE causal-LM family in the table: tiny random model, budgeted training.

Per family: wrapping leaves outputs unchanged; ``train_only``'s experts forward (the registered
implementation on stand-ins of the experts module) computes what the family's forward computes; two optimizer steps with a budget of
experts per layer update exactly the selected experts and leave every other expert bit-identical.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import wrap
from hfedmoe.moe.catalog import moe_causal_lm_model_types, tiny_family_model
from hfedmoe.moe.families import LEFT_OUT, TRANSFORMERS_FAMILIES
from hfedmoe.moe.layouts import SUPPORTED_FAMILIES

# core families have their own, deeper tests in test_moe_adapter.py (same names as model types)
CORE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
COVERED = CORE + tuple(f.name for f in TRANSFORMERS_FAMILIES)
# a fast representative subset: one per router kind (softmax, sigmoid+groups, routed via `router`,
# transposed experts with biases, non-gated experts); the rest run under -m slow
FAST = ("minimax", "glm4_moe", "granitemoe", "gpt_oss", "nemotron_h", "phimoe")


def _params(names):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def test_enumeration_is_covered_or_left_out_with_a_reason():
    types = moe_causal_lm_model_types()
    covered = [t for t in types if t in SUPPORTED_FAMILIES]
    assert set(covered) == set(COVERED)
    assert set(types) - set(covered) == set(LEFT_OUT)
    assert all(reason for reason in LEFT_OUT.values())
    assert len(covered) >= 45, (len(covered), len(types))


def _batch(seed=0, b=3, s=9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, -2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _experts(adapter):
    return {(l, e): adapter.get_expert(l, e) for l in range(adapter.num_layers) for e in range(adapter.num_experts)}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", _params(COVERED))
def test_family_trains_a_budget_and_freezes_the_rest(family):
    model = tiny_family_model(family)
    batch = _batch()
    with torch.no_grad():
        before = model(**batch).logits
    adapter = wrap(model)
    assert adapter.family == family and adapter.num_experts == 6 and adapter.num_layers >= 1
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)
        with adapter.capture_routing() as cap:
            model(**batch)
        # train_only's experts forward (all experts trainable) computes the family's forward on
        # real tokens (padding skips the experts inside train_only, so pad positions may differ)
        real = batch["attention_mask"].bool()  # (B, S)
        with adapter.train_only([None] * adapter.num_layers):
            torch.testing.assert_close(model(**batch).logits[real], before[real], rtol=1e-4, atol=1e-5)
    hit = []
    for layer in range(adapter.num_layers):
        r = cap.layer(layer)
        assert r.gate_probs.shape == (r.topk_idx.shape[0], 6) and r.topk_idx.shape[1] == adapter.top_k
        torch.testing.assert_close(r.gate_probs.sum(-1), torch.ones(r.gate_probs.shape[0]))
        counts = torch.bincount(r.topk_idx[r.token_mask].flatten(), minlength=6)
        hit.append([int(e) for e in torch.argsort(counts, descending=True, stable=True) if counts[e] > 0])

    model.train()
    leaves = adapter.expert_leaves()
    opt = torch.optim.AdamW([t for ts in leaves.values() for t in ts], lr=1e-2, weight_decay=0.1)
    for subsets in ([h[:2] for h in hit], [h[1:2] for h in hit]):  # budget 2, then 1 (momentum!)
        start = _experts(adapter)
        opt.zero_grad(set_to_none=True)
        with adapter.train_only(subsets):
            model(**batch).loss.backward()
        opt.step()
        for (layer, e), tensors in _experts(adapter).items():
            assert _same(tensors, start[(layer, e)]) != (e in subsets[layer]), (family, layer, e)


@pytest.mark.parametrize("family", _params(COVERED))
def test_family_restrict_routing(family):
    # every covered family has a route function: hand-written (layouts) or the generic mask
    # (restrict.route_masked, tested in depth in test_moe_restrict.py)
    adapter = wrap(tiny_family_model(family))
    subsets = [[0, 2, 4]] * adapter.num_layers
    with torch.no_grad(), adapter.restrict_routing(subsets), adapter.capture_routing() as cap:
        out = adapter.model(**_batch()).logits
    assert torch.isfinite(out).all()
    for layer in range(adapter.num_layers):
        assert torch.isin(cap.topk_idx[layer], torch.tensor([0, 2, 4])).all()


def test_a_family_without_route_function_is_refused_in_one_line(monkeypatch):
    adapter = wrap(tiny_family_model("granitemoe"))
    info = adapter._layers[0]
    monkeypatch.setattr(info, "spec", dataclasses.replace(info.spec, route=None))
    with pytest.raises(UnsupportedModelError, match="not available for family 'granitemoe'"):
        adapter.restrict_routing([[0, 2, 4]] * adapter.num_layers)
