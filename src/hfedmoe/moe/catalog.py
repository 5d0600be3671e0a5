"""Which transformers model types are MoE causal LMs, and tiny random configs for each.

:func:`moe_causal_lm_model_types` is the reproducible enumeration behind the coverage count of
docs/moe-families.md (``python -m hfedmoe.moe.catalog`` prints it). :func:`tiny_family_model` builds a tiny
random ``*ForCausalLM`` of any such model type on CPU: one generic shrink of the family's default
config (small widths, 2 layers, 6 experts, top-2) plus per-family overrides where the generic
shrink breaks an architectural constraint.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# config attributes that hold the number of routed experts (first present wins for reporting)
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_k", "moe_topk", "top_k", "top_k_experts")
_LAYER_LIST_KEYS = ("layer_types", "layers_block_type")

TINY_EXPERTS = 6
_SHRINK = dict(
    hidden_size=32, intermediate_size=24, moe_intermediate_size=16, shared_expert_intermediate_size=16,
    num_hidden_layers=2, num_layers=2, num_dense_layers=0, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=99,
    max_position_embeddings=64, first_k_dense_replace=0, n_group=2, topk_group=1, kv_lora_rank=16,
    q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, moe_layer_freq=1,
    decoder_sparse_step=1, mlp_only_layers=[], pad_token_id=0, bos_token_id=1, eos_token_id=2,
    expert_interval=1, moe_num_shared_experts=1, n_shared_experts=1, num_shared_experts=1,
    use_cache=False, initializer_range=0.1, tie_word_embeddings=False,
)
# model type -> extra config overrides applied after the generic shrink
TINY_OVERRIDES: dict[str, dict] = {
    # MLA attention: the rope part of the query/key is head_dim
    **{mt: {"head_dim": 4, "num_key_value_heads": 4} for mt in ("axk1", "axk2", "deepseek_v2", "deepseek_v3", "deepseek_v32",
                                       "glm_moe_dsa", "glm4_moe_lite", "hy_v4", "longcat_flash",
                                       "bailing_hybrid", "kimi_linear")},
    "deepseek_v4": {"mlp_layer_types": ["moe", "moe"]},
    "granitemoehybrid": {"mamba_n_heads": 8, "mamba_d_head": 8},
    "zaya": {"num_experts_per_tok": 1},
    "lfm2_moe": {"layer_types": ["full_attention", "conv"]},
    "qwen4_exp_text": {"layer_types": ["linear_attention", "linear_attention"]},
}


def moe_causal_lm_model_types() -> dict[str, str]:
    """Model type → causal-LM class name, for every transformers model type whose default config
    (or its text config) has an experts count (:data:`EXPERT_COUNT_KEYS`) and that has an entry in
    ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``. Sorted by model type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_type in sorted(CONFIG_MAPPING.keys()):
            if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
                continue
            try:
                config = CONFIG_MAPPING[model_type]()
            except Exception:  # noqa: BLE001 - a default config that does not validate has no count
                continue
            if _expert_count_attrs(config):
                out[model_type] = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    return out


def _expert_count_attrs(config) -> list[str]:
    try:
        text = config.get_text_config()
    except Exception:  # noqa: BLE001 - ambiguous sub-configs: look at the top level only
        text = config
    return [k for k in EXPERT_COUNT_KEYS if hasattr(text, k) or hasattr(config, k)]


def tiny_family_config(model_type: str, num_experts: int = TINY_EXPERTS, top_k: int = 2):
    """The family's default config shrunk to a tiny size (see module docstring)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[model_type]
    default = config_cls()
    wanted = {**_SHRINK, **TINY_OVERRIDES.get(model_type, {})}
    kw = {k: v for k, v in wanted.items() if hasattr(default, k)}
    kw.update({k: num_experts for k in EXPERT_COUNT_KEYS if hasattr(default, k)})
    kw.update({k: top_k for k in _TOPK_KEYS if hasattr(default, k)})
    kw.update(TINY_OVERRIDES.get(model_type, {}))
    layers = kw.get("num_hidden_layers", kw.get("num_layers", 2))
    for key in _LAYER_LIST_KEYS:
        value = getattr(default, key, None)
        if isinstance(value, list) and value and not isinstance(getattr(config_cls, key, None), property):
            distinct = list(dict.fromkeys(value))  # e.g. linear + full attention: keep one of each
            kw[key] = (distinct * layers)[:layers]
    if isinstance(getattr(default, "mlp_layer_types", None), list) and "mlp_layer_types" not in kw:
        kw["mlp_layer_types"] = ["sparse"] * layers
    config = config_cls(**kw)
    config._attn_implementation = "eager"
    # grouped_mm needs 16-byte aligned strides on CPU; the eager loop is the reference anyway
    config._experts_implementation = "eager"
    return config


def tiny_family_model(model_type: str, seed: int = 0, **kw) -> nn.Module:
    """A tiny random causal LM of ``model_type`` in eval mode; the global RNG is left untouched."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = tiny_family_config(model_type, **kw)
    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        for module in model.modules():  # make sigmoid routers' correction bias matter
            bias = getattr(module, "e_score_correction_bias", None)
            if isinstance(bias, torch.Tensor) and bias.dim() == 1:
                with torch.no_grad():
                    bias.copy_(torch.rand(bias.shape) * 0.1)
    return model.eval()


if __name__ == "__main__":  # pragma: no cover - prints the enumeration for docs/moe-families.md
    types = moe_causal_lm_model_types()
    for mt, cls in types.items():
        print(f"{mt:24s} {cls}")
    print(f"{len(types)} model types")
