"""Sparse MoE adapters on frozen dense models: identity at init, an expert layout like any other
(capture, restrict, train_only, per-expert read/write), frozen base, refusals."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from hfedmoe.client.parts import dense_names_for, part_of
from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import wrap
from hfedmoe.moe.build import moefy_bert
from hfedmoe.moe.sparse_adapter import add_moe_adapters, adapter_settings

VOCAB = 99


def tiny_bert(seed=0, intermediate=37):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=30, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=intermediate, num_labels=3, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=30, intermediate_size=46, num_hidden_layers=layers,
                      num_attention_heads=3, num_key_value_heads=1)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg).eval()


def batch():
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (3, 7), generator=gen)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama])
def test_adapted_model_equals_dense_model_at_init_bit_for_bit(make):
    model = make()
    ids, mask = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        assert add_moe_adapters(model, 5, 2, 4, seed=1) == model.config.num_hidden_layers
        out = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ref, out)
    mm = wrap(model)
    assert (mm.family, mm.num_layers, mm.num_experts, mm.top_k) == ("moe_adapter", model.config.num_hidden_layers, 5, 2)
    e = mm.get_expert(0, 3)
    assert e["up_proj"].shape == (4, 30) and e["down_proj"].shape == (30, 4)
    assert torch.count_nonzero(e["down_proj"]) == 0 and torch.count_nonzero(e["up_proj"]) > 0


def test_adapter_init_is_seeded_and_placement_chooses_layers():
    a, b = tiny_llama(), tiny_llama()
    add_moe_adapters(a, 4, 2, 3, layers=[0, 2], seed=7)
    add_moe_adapters(b, 4, 2, 3, layers=[0, 2], seed=7)
    ma, mb = wrap(a), wrap(b)
    assert ma.num_layers == 2
    assert torch.equal(ma.router_weight(1), mb.router_weight(1))
    assert adapter_settings(a)["layers"] == [0, 2]
    names = [n for n, _ in a.named_parameters() if ".layers.1.mlp." in n]
    assert names and all(".frozen_ffn." in n for n in names)  # layer 1: no adapter, FFN frozen


def test_routing_of_adapter_routers_is_softmax_of_the_ffn_input():
    model = tiny_llama()
    add_moe_adapters(model, 6, 2, 3, seed=2)
    mm = wrap(model)
    inputs = {}
    block = model.model.layers[1].mlp
    block.register_forward_hook(lambda mod, args, out: inputs.__setitem__("x", args[0].detach()))
    ids, mask = batch()
    with torch.no_grad(), mm.capture_routing() as cap:
        model(input_ids=ids, attention_mask=mask)
    x = inputs["x"].reshape(-1, 30)  # (T, d)
    expected = torch.softmax(x @ mm.router_weight(1).detach().T, dim=-1)  # (T, M)
    routing = cap.layer(1)
    torch.testing.assert_close(routing.gate_probs, expected, rtol=0, atol=1e-6)
    assert torch.equal(routing.topk_idx.sort(dim=-1).values, expected.topk(2, dim=-1).indices.sort(dim=-1).values)
    assert routing.token_mask.tolist() == mask.reshape(-1).bool().tolist()


def test_budgeted_step_changes_only_selected_adapter_experts_and_never_the_base():
    model = tiny_bert()
    add_moe_adapters(model, 4, 2, 3, seed=0)
    mm = wrap(model)
    with torch.no_grad():  # non-zero outputs so that up_proj gets gradient too
        for layer in range(mm.num_layers):
            stacked = mm.get_experts(layer)
            stacked["down_proj"].normal_(0, 0.1)
            mm.set_experts(layer, stacked)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    experts_before = [mm.get_experts(layer) for layer in range(mm.num_layers)]
    for p in model.parameters():
        p.requires_grad_(False)
    leaves = mm.expert_leaves()
    opt = torch.optim.SGD([t for ts in leaves.values() for t in ts] + mm.router_parameters(), lr=0.5)
    for p in mm.router_parameters():
        p.requires_grad_(True)
    ids, mask = batch()
    model.train()
    subsets = [[1], [0, 2]]
    with mm.restrict_routing([[0, 1, 3], [0, 2]]), mm.train_only(subsets):
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
        out.loss.backward()
    opt.step()
    for layer, chosen in enumerate(subsets):
        now = mm.get_experts(layer)
        for e in range(4):
            same = all(torch.equal(now[n][e], experts_before[layer][n][e]) for n in now)
            assert same == (e not in chosen), (layer, e)
    dense = mm.dense_named_parameters()
    frozen = [n for n in dense if part_of(n) == "frozen"]
    assert len(frozen) == 8  # 2 layers x (intermediate.dense, dense_out) x (weight, bias)
    for n in dense:
        assert torch.equal(dense[n], before[n]), n
    every_part = dense_names_for(list(dense), ["experts", "routers", "head", "attention", "embeddings", "norms"])
    assert not set(frozen) & set(every_part)  # no train.trainable list reaches the base FFN


def test_adapter_on_an_moe_model_and_bad_sizes_are_refused():
    model = tiny_bert(intermediate=36)
    moefy_bert(model, 4, 2, seed=0)
    with pytest.raises(UnsupportedModelError, match="model.adapter: 'moe' needs a dense model.*minilm_moe"):
        add_moe_adapters(model, 4, 2, 3)
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        add_moe_adapters(tiny_bert(), 4, 2, 0)
    with pytest.raises(ValueError, match=r"adapter layers \[5\] out of range: the model has 2 FFN layers"):
        add_moe_adapters(tiny_bert(), 4, 2, 3, layers=[5])
    with pytest.raises(UnsupportedModelError, match="no FFN found"):
        add_moe_adapters(torch.nn.Sequential(torch.nn.Linear(3, 3)), 4, 2, 3)


def test_exported_adapters_reload_into_a_fresh_base_and_match_outputs(tmp_path):
    from hfedmoe.errors import HFedMoEError
    from hfedmoe.moe.adapter_export import CONFIG_FILE, load_moe_adapters, save_moe_adapters

    model = tiny_bert(seed=4)
    add_moe_adapters(model, 4, 2, 3, layers=[1], seed=5)
    mm = wrap(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: adapters and head moved
        stacked = mm.get_experts(0)
        mm.set_experts(0, {n: t + torch.randn(t.shape, generator=gen) * 0.1 for n, t in stacked.items()})
        mm.router_weight(0).add_(torch.randn(mm.router_weight(0).shape, generator=gen))
        model.classifier.weight.add_(1.0)
    out = save_moe_adapters(mm, tmp_path / "exp", ["classifier.weight", "classifier.bias"], {"round": 3})
    ids, mask = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    fresh = tiny_bert(seed=4)
    with torch.no_grad():
        assert not torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, want)
    loaded = load_moe_adapters(fresh, out)
    with torch.no_grad():
        got = loaded.model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(got, want) and loaded.num_layers == 1
    with pytest.raises(HFedMoEError, match="tensors that do not fit this model"):
        other = BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2,
                                                         num_attention_heads=3, intermediate_size=37, num_labels=3))
        load_moe_adapters(other, out)
    (out / CONFIG_FILE).write_text("{}")
    with pytest.raises(HFedMoEError, match="is not a hfedmoe-moe-adapters v1 directory"):
        load_moe_adapters(tiny_bert(), out)


def test_flop_model_counts_the_frozen_ffn_forward_and_input_gradients_only():
    from hfedmoe.client.flops import flop_model
    from hfedmoe.core.flops import BatchShape, FlopModel

    shape = BatchShape(1, 3, [0, 0], [0, 0])
    score = 4 * 1 * 3**2 * 4  # QK^T and PV of one layer, width 4
    fm = FlopModel(num_layers=2, attention_width=4, expert_params=10, attention_params=0, router_params=0,
                   frozen_layer_params=7, router_trainable=False, head_trainable=False, head_params=0)
    assert fm.forward(shape) == 2 * (2 * 3 * 7 + score)
    assert fm.backward(shape) == 0  # nothing below or inside needs a gradient
    fm_in = FlopModel(num_layers=2, attention_width=4, expert_params=10, attention_params=0, router_params=0,
                      frozen_layer_params=7, router_trainable=False, head_trainable=False, head_params=0,
                      embeddings_trainable=True)
    assert fm_in.backward(shape) == 2 * (2 * score + 2 * 3 * 7)  # input gradients through the frozen FFN
    model = tiny_bert()
    add_moe_adapters(model, 4, 2, 3)
    fm_model = flop_model(wrap(model), ["experts", "routers", "head"])
    assert fm_model.frozen_layer_params == 30 * 37 * 2 and fm_model.other_layer_params == 0
    assert fm_model.expert_params == 2 * 3 * 30
