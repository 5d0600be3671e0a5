"""wrap(model) -> MoEModel on a tiny model of every supported family."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import LayerRouting, wrap
from hfedmoe.moe.build import TINY_FAMILIES, tiny_model

B, S, S_DEC = 3, 7, 5




def make_batch(family: str, seed: int = 0, pad: int = 0) -> dict[str, torch.Tensor]:
    """Inputs with labels; ``pad`` extra right-padding positions (attention_mask 0) per sequence."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (B, S), generator=gen)
    mask = torch.ones(B, S, dtype=torch.long)
    if pad:
        ids = torch.cat([ids, torch.zeros(B, pad, dtype=torch.long)], dim=1)
        mask = torch.cat([mask, torch.zeros(B, pad, dtype=torch.long)], dim=1)
    batch = {"input_ids": ids, "attention_mask": mask}
    if family == "switch":
        dec = torch.randint(3, 99, (B, S_DEC), generator=gen)
        dec_mask = torch.ones(B, S_DEC, dtype=torch.long)
        labels = dec.clone()
        if pad:
            dec = torch.cat([dec, torch.zeros(B, pad, dtype=torch.long)], dim=1)
            dec_mask = torch.cat([dec_mask, torch.zeros(B, pad, dtype=torch.long)], dim=1)
            labels = torch.cat([labels, torch.full((B, pad), -100)], dim=1)
        batch.update(decoder_input_ids=dec, decoder_attention_mask=dec_mask, labels=labels)
    elif family == "minilm_moe":
        batch["labels"] = torch.randint(0, 2, (B,), generator=gen)
    else:
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


def run(model: nn.Module, batch: dict[str, torch.Tensor]):
    return model(**batch)


def all_experts(adapter) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    return {
        (layer, e): adapter.get_expert(layer, e)
        for layer in range(adapter.num_layers)
        for e in range(adapter.num_experts)
    }


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def hit_experts(adapter, batch) -> list[list[int]]:
    """Experts each layer routes at least one real token to, most used first."""
    with torch.no_grad(), adapter.capture_routing() as cap:
        run(adapter.model, batch)
    out = []
    for layer in range(adapter.num_layers):
        r = cap.layer(layer)
        counts = torch.bincount(r.topk_idx[r.token_mask].flatten(), minlength=adapter.num_experts)
        order = torch.argsort(counts, descending=True, stable=True)
        out.append([int(e) for e in order if counts[e] > 0])
    return out


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


# ------------------------------------------------------------------------------------- wrap
def test_wrap_does_not_change_outputs_and_is_idempotent(family):
    model = tiny_model(family)
    batch = make_batch(family)
    with torch.no_grad():
        before = run(model, batch).logits
        adapter = wrap(model)
        after = run(model, batch).logits
        with adapter.capture_routing():
            captured = run(model, batch).logits
    assert torch.equal(before, after)
    assert torch.equal(before, captured)
    assert wrap(model) is adapter
    assert adapter.family == family
    assert adapter.num_layers >= 2 and adapter.top_k == (1 if family == "switch" else 2)
    assert adapter.hidden_size == 36


@pytest.mark.parametrize("make", [lambda: nn.Linear(3, 4), "llama"])
def test_unsupported_model_raises_naming_class(make):
    if make == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=20,
                                             num_hidden_layers=1, num_attention_heads=2))
    else:
        model = make()
    with pytest.raises(UnsupportedModelError, match=type(model).__name__) as info:
        wrap(model)
    assert "mixtral" in str(info.value)


# ------------------------------------------------------------------------------------- experts
def test_set_expert_changes_only_that_expert(family):
    adapter = wrap(tiny_model(family))
    sd_before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    experts_before = all_experts(adapter)
    layer, idx = adapter.num_layers - 1, 1
    new = {k: torch.randn_like(v) for k, v in experts_before[(layer, idx)].items()}
    adapter.set_expert(layer, idx, new)

    assert same(adapter.get_expert(layer, idx), new)
    for key, tensors in all_experts(adapter).items():
        if key != (layer, idx):
            assert same(tensors, experts_before[key]), key
    sd_after = adapter.model.state_dict()
    expert_keys = adapter.expert_state_keys()
    for k, v in sd_before.items():
        if k not in expert_keys:
            assert torch.equal(sd_after[k], v), k
    changed = [k for k in expert_keys if not torch.equal(sd_after[k], sd_before[k])]
    assert changed  # the live storage was written


def test_get_set_round_trips_and_validation(family):
    adapter = wrap(tiny_model(family))
    names = adapter.expert_param_names(0)
    one = adapter.get_expert(0, 2)
    assert list(one) == names
    stacked = adapter.get_experts(0)
    for n in names:
        assert stacked[n].shape == (adapter.num_experts, *one[n].shape)
        assert torch.equal(stacked[n][2], one[n])
    one[names[0]].add_(1.0)  # clones: the model is untouched
    assert not torch.equal(adapter.get_expert(0, 2)[names[0]], one[names[0]])
    adapter.set_expert(0, 2, one)
    assert same(adapter.get_expert(0, 2), one)
    stacked = {k: v * 2 for k, v in stacked.items()}
    adapter.set_experts(1, stacked)
    assert same(adapter.get_experts(1), stacked)
    with pytest.raises(ValueError, match="expected tensors named"):
        adapter.set_expert(0, 0, {"nope": one[names[0]]})
    with pytest.raises(ValueError, match="shape"):
        adapter.set_expert(0, 0, {**one, names[0]: one[names[0]][:1]})
    with pytest.raises(ValueError, match="expert index"):
        adapter.get_expert(0, adapter.num_experts)
    router = adapter.router_state(0)
    assert torch.equal(router["weight" if "weight" in router else "classifier.weight"], adapter.router_weight(0))
    adapter.set_router_state(0, {k: v + 1 for k, v in router.items()})
    assert all(torch.equal(adapter.router_state(0)[k], v + 1) for k, v in router.items())
    assert adapter.router_weight(0).shape == (adapter.num_experts, adapter.hidden_size)


def test_state_keys_partition(family):
    adapter = wrap(tiny_model(family))
    keys = set(adapter.model.state_dict())
    experts, routers = adapter.expert_state_keys(), adapter.router_state_keys()
    assert experts and routers and not experts & routers
    assert experts | routers <= keys
    dense = keys - experts - routers
    assert dense
    if family == "deepseek_v3":
        assert any(k.endswith("e_score_correction_bias") for k in routers)
    if family == "qwen2_moe":
        assert any("shared_expert" in k for k in dense)
    dense_params = adapter.dense_named_parameters()
    assert set(dense_params) <= dense
    ids = {id(p) for p in dense_params.values()}
    assert not ids & {id(p) for p in adapter.router_parameters()}
    assert not ids & {id(t) for leaves in adapter.expert_leaves().values() for t in leaves}


# ------------------------------------------------------------------------------------- routing
def test_capture_routing_shapes(family):
    adapter = wrap(tiny_model(family))
    batch = make_batch(family)
    with torch.no_grad(), adapter.capture_routing() as cap:
        run(adapter.model, batch)
    for layer in range(adapter.num_layers):
        r = cap.layer(layer)
        assert isinstance(r, LayerRouting)
        num_tokens = r.gate_probs.shape[0]
        assert num_tokens in (B * S, B * S_DEC)
        assert r.gate_probs.dtype == torch.float32 and r.gate_probs.shape == (num_tokens, adapter.num_experts)
        assert r.topk_idx.dtype == torch.long and r.topk_idx.shape == (num_tokens, adapter.top_k)
        assert r.token_mask.dtype == torch.bool and r.token_mask.all()
        torch.testing.assert_close(r.gate_probs.sum(-1), torch.ones(num_tokens))


def test_restrict_routing_obeys_subsets_and_all_experts_is_identity(family):
    adapter = wrap(tiny_model(family))
    batch = make_batch(family)
    num_experts, k = adapter.num_experts, adapter.top_k
    subsets = [list(range(layer % 2, num_experts, 2))[: max(k, 2)] for layer in range(adapter.num_layers)]
    with torch.no_grad():
        with adapter.capture_routing() as plain:
            plain_logits = run(adapter.model, batch).logits
        with adapter.restrict_routing([list(range(num_experts))] * adapter.num_layers), \
                adapter.capture_routing() as full:
            full_logits = run(adapter.model, batch).logits
        with adapter.restrict_routing(subsets), adapter.capture_routing() as cap:
            run(adapter.model, batch)
        none_logits = None
        with adapter.restrict_routing([None] * adapter.num_layers):
            none_logits = run(adapter.model, batch).logits
    torch.testing.assert_close(full_logits, plain_logits, rtol=0, atol=1e-6)
    assert torch.equal(none_logits, plain_logits)
    for layer, subset in enumerate(subsets):
        assert torch.equal(torch.sort(full.topk_idx[layer], -1).values, torch.sort(plain.topk_idx[layer], -1).values)
        idx = cap.topk_idx[layer]
        assert torch.isin(idx, torch.tensor(subset)).all(), (layer, subset, idx.unique())
        outside = [e for e in range(num_experts) if e not in subset]
        assert torch.all(cap.gate_probs[layer][:, outside] == 0)


def test_restrict_routing_rejects_small_or_bad_subsets():
    adapter = wrap(tiny_model("mixtral"))
    with pytest.raises(ValueError, match="fewer than top_k"):
        adapter.restrict_routing([[0], None])
    with pytest.raises(ValueError, match="one per MoE layer"):
        adapter.restrict_routing([[0, 1]])
    with pytest.raises(ValueError, match="outside"):
        adapter.restrict_routing([[0, 9], None])


def test_deepseek_group_limit_is_lifted_when_too_few_allowed():
    # groups of 2 experts: {0,1} {2,3} {4,5}; top-2 groups; allow one expert in each group
    adapter = wrap(tiny_model("deepseek_v3"))
    batch = make_batch("deepseek_v3")
    with torch.no_grad(), adapter.restrict_routing([[0, 2, 4]] * 2), adapter.capture_routing() as cap:
        out = run(adapter.model, batch).logits
    assert torch.isfinite(out).all()
    for layer in range(2):
        assert torch.isin(cap.topk_idx[layer], torch.tensor([0, 2, 4])).all()


def test_padding_does_not_change_real_token_routing(family):
    adapter = wrap(tiny_model(family))
    with torch.no_grad():
        with adapter.capture_routing() as plain:
            run(adapter.model, make_batch(family))
        padded_batch = make_batch(family, pad=4)
        with adapter.capture_routing() as padded:
            run(adapter.model, padded_batch)
    for layer in range(adapter.num_layers):
        p, q = plain.layer(layer), padded.layer(layer)
        assert p.token_mask.all() and q.token_mask.sum() == p.token_mask.numel()
        torch.testing.assert_close(q.gate_probs[q.token_mask], p.gate_probs, rtol=0, atol=1e-5)


def test_explicit_attention_mask_wins():
    adapter = wrap(tiny_model("minilm_moe"))
    batch = make_batch("minilm_moe", pad=2)
    mask = batch["attention_mask"].clone()
    mask[:, 0] = 0
    with torch.no_grad(), adapter.capture_routing(attention_mask=mask) as cap:
        run(adapter.model, batch)
    assert torch.equal(cap.token_mask[0], mask.flatten().bool())


# ------------------------------------------------------------------------------------- train_only
def _two_steps(adapter, batch, make_opt, mode="no_grad"):
    """Two optimizer steps with different subsets; checks the invariants after each."""
    leaves = adapter.expert_leaves()
    opt = make_opt([t for ts in leaves.values() for t in ts] + adapter.router_parameters())
    fused = [p for n, p in adapter.model.named_parameters() if n in adapter.expert_state_keys()]
    hit = hit_experts(adapter, batch)
    subsets_1 = [h[:2] for h in hit]
    subsets_2 = [h[1:2] for h in hit]  # expert h[0] had momentum from step 1 and is now frozen
    for subsets in (subsets_1, subsets_2):
        before = all_experts(adapter)
        opt.zero_grad(set_to_none=True)
        with adapter.train_only(subsets, mode=mode) as ctx:
            loss = run(adapter.model, batch).loss
            loss.backward()
        for layer, subset in enumerate(subsets):
            assert torch.equal(ctx.selected[layer], torch.tensor(sorted(subset), dtype=torch.long))
            for e in range(adapter.num_experts):
                grads = [t.grad for t in leaves[(layer, e)]]
                if e in subset:
                    assert all(g is not None for g in grads), (layer, e)
                else:
                    assert all(g is None for g in grads), (layer, e)
        if adapter.family != "switch":
            assert fused and all(p.grad is None and p.requires_grad for p in fused)
        opt.step()
        after = all_experts(adapter)
        for (layer, e), tensors in after.items():
            if e in subsets[layer]:
                assert not same(tensors, before[(layer, e)]), (layer, e)
            else:
                assert same(tensors, before[(layer, e)]), (layer, e)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd_momentum", "adamw"],
)
def test_train_only_freezes_unselected_experts_bit_for_bit(family, make_opt):
    adapter = wrap(tiny_model(family))
    _two_steps(adapter, make_batch(family), make_opt)


def test_train_only_detach_mode():
    adapter = wrap(tiny_model("qwen2_moe"))
    _two_steps(adapter, make_batch("qwen2_moe"), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "detach")


@pytest.mark.parametrize("family_", ["mixtral", "minilm_moe", "switch"])
def test_detach_mode_keeps_upstream_gradients_exact(family_):
    adapter = wrap(tiny_model(family_))
    batch = make_batch(family_)
    dense = adapter.dense_named_parameters()
    name = next(n for n in dense if "embed" in n or n.startswith("shared"))

    def grad_of(subsets, mode):
        adapter.model.zero_grad(set_to_none=True)
        with adapter.train_only(subsets, mode=mode):
            run(adapter.model, batch).loss.backward()
        return dense[name].grad.clone()

    full = grad_of([None] * adapter.num_layers, "no_grad")
    subsets = [[0]] * adapter.num_layers
    torch.testing.assert_close(grad_of(subsets, "detach"), full, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(grad_of(subsets, "no_grad"), full, rtol=1e-5, atol=1e-7)


def test_selector_is_called_once_per_layer_and_decides_gradients(family):
    adapter = wrap(tiny_model(family))
    batch = make_batch(family)
    calls: list[tuple[int, LayerRouting]] = []
    chosen: dict[int, int] = {}

    def selector(layer: int, routing: LayerRouting):
        calls.append((layer, routing))
        counts = torch.bincount(routing.topk_idx[routing.token_mask].flatten(), minlength=adapter.num_experts)
        chosen[layer] = int(counts.argmax())
        return [chosen[layer]]

    leaves = adapter.expert_leaves()
    with adapter.train_only(selector) as ctx:
        run(adapter.model, batch).loss.backward()
    assert [layer for layer, _ in calls] == list(range(adapter.num_layers))
    for layer, routing in calls:
        num_tokens = routing.gate_probs.shape[0]
        assert routing.gate_probs.shape == (num_tokens, adapter.num_experts)
        assert routing.topk_idx.shape == (num_tokens, adapter.top_k)
        assert routing.token_mask.shape == (num_tokens,) and routing.token_mask.dtype == torch.bool
        assert not routing.gate_probs.requires_grad
        assert torch.equal(ctx.selected[layer], torch.tensor([chosen[layer]]))
        for e in range(adapter.num_experts):
            has_grad = all(t.grad is not None for t in leaves[(layer, e)])
            assert has_grad == (e == chosen[layer]), (layer, e)
    assert all(p.grad is not None for p in adapter.router_parameters())


def test_contexts_nest_and_restore_on_exceptions():
    adapter = wrap(tiny_model("mixtral"))
    batch = make_batch("mixtral")
    fused = [p for n, p in adapter.model.named_parameters() if n in adapter.expert_state_keys()]
    with pytest.raises(RuntimeError, match="boom"):
        with adapter.restrict_routing([[0, 1, 2], None]), adapter.train_only([[0], [1, 2]]) as ctx, \
                adapter.capture_routing() as cap:
            assert all(not p.requires_grad for p in fused)
            run(adapter.model, batch).loss.backward()
            assert torch.isin(cap.topk_idx[0], torch.tensor([0, 1, 2])).all()
            assert ctx.selected[1].tolist() == [1, 2]
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in fused)
    assert not adapter._is_active()
    with pytest.raises(ValueError, match="mode"):
        adapter.train_only([None, None], mode="bogus")


def test_leaves_are_persistent_and_track_storage():
    adapter = wrap(tiny_model("mixtral"))
    leaves = adapter.expert_leaves()
    assert adapter.expert_leaves()[(0, 1)][0] is leaves[(0, 1)][0]
    with torch.no_grad():
        leaves[(0, 1)][0].add_(1.0)  # writes into the model's weights
    assert torch.equal(adapter.get_expert(0, 1)["gate_up_proj"], leaves[(0, 1)][0])
    adapter.model.to(torch.float64)  # storage replaced -> leaves re-created
    fresh = adapter.expert_leaves()
    assert fresh[(0, 1)][0] is not leaves[(0, 1)][0] and fresh[(0, 1)][0].dtype == torch.float64


def test_deepcopy_gives_an_independent_adapter():
    model = tiny_model("mixtral")
    adapter = wrap(model)
    twin = copy.deepcopy(model)
    twin_adapter = wrap(twin)
    assert twin_adapter is not adapter and twin_adapter.model is twin
    new = {k: torch.zeros_like(v) for k, v in adapter.get_expert(0, 0).items()}
    twin_adapter.set_expert(0, 0, new)
    assert not same(adapter.get_expert(0, 0), new)
    batch = make_batch("mixtral")
    with torch.no_grad(), twin_adapter.capture_routing() as cap:
        run(twin, batch)
    assert len(cap.gate_probs) == 2


@pytest.mark.parametrize(
    "family_, overrides",
    [
        ("deepseek_v2", {"topk_method": "greedy"}),
        ("deepseek_v3", {"n_group": 1, "topk_group": 1, "norm_topk_prob": False}),
        ("qwen2_moe", {"norm_topk_prob": True}),
        ("olmoe", {"norm_topk_prob": True}),
        ("switch", {"expert_capacity": 2}),  # capacity drops tokens
        ("minilm_moe", {"top_k": 5}),
    ],
)
def test_route_functions_match_family_code_on_variants(family_, overrides):
    adapter = wrap(tiny_model(family_, **overrides))
    batch = make_batch(family_)
    with torch.no_grad():
        plain = run(adapter.model, batch).logits
        with adapter.restrict_routing([list(range(adapter.num_experts))] * adapter.num_layers):
            full = run(adapter.model, batch).logits
    torch.testing.assert_close(full, plain, rtol=0, atol=1e-6)


def test_base_model_and_sequence_classification_variants():
    from transformers import MixtralForSequenceClassification

    causal = tiny_model("mixtral")
    base = causal.model
    adapter = wrap(base)
    assert adapter.family == "mixtral" and adapter.num_layers == 2
    assert all(not k.startswith("model.") for k in adapter.expert_state_keys())
    config = copy.deepcopy(causal.config)
    config.num_labels = 3
    classifier = MixtralForSequenceClassification(config).eval()
    cls_adapter = wrap(classifier)
    batch = make_batch("mixtral", pad=2)
    with torch.no_grad(), cls_adapter.capture_routing() as cap:
        classifier(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert cap.token_mask[0].sum() == B * S


def test_train_only_trains_selected_experts_even_when_the_caller_froze_everything(family):
    """client.train freezes every parameter and relies on train_only for experts: the selected
    experts of every family (Switch's per-expert modules included) must get a gradient and change,
    the others must not; requires_grad flags are restored afterwards."""
    adapter = wrap(tiny_model(family))
    batch = make_batch(family)
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    leaves = adapter.expert_leaves()
    opt = torch.optim.SGD([t for ts in leaves.values() for t in ts], lr=0.1)
    subsets = [h[:1] for h in hit_experts(adapter, batch)]
    before = all_experts(adapter)
    for p in adapter.router_parameters():
        p.requires_grad_(True)  # something upstream of the loss must require grad
    with adapter.train_only(subsets, mode="no_grad"):
        run(adapter.model, batch).loss.backward()
    opt.step()
    after = all_experts(adapter)
    for (layer, e), tensors in after.items():
        assert same(tensors, before[(layer, e)]) == (e not in subsets[layer]), (family, layer, e)
    assert all(not p.requires_grad for n, p in adapter.model.named_parameters()
               if n in adapter.expert_state_keys())
