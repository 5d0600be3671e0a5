"""Build the from-scratch MoE of a preset (transformers' own classes: Mixtral or Qwen3-MoE)."""

from __future__ import annotations

import torch

from hfedmoe.pretrain.presets import PretrainPreset


def build_config(p: PretrainPreset, tokenizer):
    """The transformers config of preset ``p`` (router logits returned so the load-balancing loss
    is part of the training loss; eager attention and experts: deterministic on CPU)."""
    common = dict(
        vocab_size=len(tokenizer), hidden_size=p.hidden, num_hidden_layers=p.layers,
        num_attention_heads=p.heads, num_key_value_heads=p.heads, num_experts_per_tok=p.top_k,
        max_position_embeddings=max(512, p.seq_len), tie_word_embeddings=True,
        router_aux_loss_coef=p.aux_loss_coef, output_router_logits=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if p.family == "mixtral":
        from transformers import MixtralConfig

        cfg = MixtralConfig(intermediate_size=p.expert_width, num_local_experts=p.num_experts, **common)
    elif p.family == "qwen3_moe":
        from transformers import Qwen3MoeConfig

        cfg = Qwen3MoeConfig(intermediate_size=p.expert_width, moe_intermediate_size=p.expert_width,
                             num_experts=p.num_experts, norm_topk_prob=False, decoder_sparse_step=1,
                             mlp_only_layers=[], head_dim=p.hidden // p.heads, **common)
    else:  # pragma: no cover - presets are a fixed table
        raise ValueError(f"family: expected mixtral | qwen3_moe, got {p.family!r}")
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    return cfg


def build_model(p: PretrainPreset, tokenizer, seed: int):
    """A freshly initialised ``*ForCausalLM`` of preset ``p`` (weights from ``seed``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(build_config(p, tokenizer))
