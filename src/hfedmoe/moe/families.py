"""The table of transformers MoE causal-LM families beyond the hand-tested core ones of ``layouts``.

Covering a family is one row: ``_row(model_type, modeling module, MoE block class, router
attribute, route function, from_output)`` (plus ``router_weight`` when the router's
``(E, H)`` weight is not ``router.weight``). Every family here stores its experts fused through
transformers' ``use_experts_implementation`` (``experts.forward(hidden, top_k_index,
top_k_weights)``), so the adapter's fused path (capture, train_only, expert read/write) applies
unchanged. ``route`` is the restricted-routing function: one of the reference routers of ``layouts``
(Mixtral, Qwen/OLMoE, DeepSeek-V3) where the family's router forward is source-identical to it (up
to names), else ``route_masked`` (``restrict.py``), which runs the family's own router forward with
the logits and top-k inputs of forbidden experts masked to ``-inf``; with ``None``,
``restrict_routing`` raises ``UnsupportedModelError`` (capture and train_only still work).
``from_output`` turns the router's own output ``(logits, weights, indices)`` into per-token
probabilities: softmax, or normalised sigmoid scores for sigmoid routers (those with an
``e_score_correction_bias``).

Families left out are listed in :data:`LEFT_OUT` with the reason (docs/moe-families.md prints the same list).
"""

from __future__ import annotations

from hfedmoe.moe.layouts import (
    FamilySpec,
    _softmax_from_output,
    _v3_from_output,
    route_deepseek_v3,
    route_mixtral,
    route_qwen_olmoe,
)
from hfedmoe.moe.restrict import route_masked


def _row(name, module, block, router, route, from_output, router_weight="weight") -> FamilySpec:
    return FamilySpec(name, (f"transformers.models.{module}", block), router, "experts", "fused",
                      route, from_output, router_weight)


_S, _V3, _M = _softmax_from_output, _v3_from_output, route_masked
TRANSFORMERS_FAMILIES: tuple[FamilySpec, ...] = (
    _row("afmoe", "afmoe.modeling_afmoe", "AfmoeSparseMoeBlock", "router", _M, _S, router_weight='gate.weight'),
    _row("aria_text", "aria.modeling_aria", "AriaTextMoELayer", "router", _M, _S),
    _row("axk1", "axk1.modeling_axk1", "AXK1MoE", "gate", route_deepseek_v3, _V3),
    _row("axk2", "axk2.modeling_axk2", "AXK2MoE", "gate", _M, _V3),
    _row("bailing_hybrid", "bailing_hybrid.modeling_bailing_hybrid", "BailingHybridMoE", "gate", route_deepseek_v3, _V3),
    _row("beam", "beam.modeling_beam", "BeamMoE", "gate", _M, _V3),
    _row("cohere2_moe", "cohere2_moe.modeling_cohere2_moe", "Cohere2MoeSparseMoeBlock", "gate", _M, _S),
    _row("deepseek_v32", "deepseek_v32.modeling_deepseek_v32", "DeepseekV32MoE", "gate", route_deepseek_v3, _V3),
    _row("deepseek_v4", "deepseek_v4.modeling_deepseek_v4", "DeepseekV4SparseMoeBlock", "gate", _M, _V3),
    _row("dots1", "dots1.modeling_dots1", "Dots1MoE", "gate", route_deepseek_v3, _V3),
    _row("ernie4_5_moe", "ernie4_5_moe.modeling_ernie4_5_moe", "Ernie4_5_MoeSparseMoeBlock", "gate", _M, _V3),
    _row("exaone_moe", "exaone_moe.modeling_exaone_moe", "ExaoneMoeSparseMoEBlock", "gate", route_deepseek_v3, _V3),
    _row("flex_olmo", "flex_olmo.modeling_flex_olmo", "FlexOlmoSparseMoeBlock", "gate", route_qwen_olmoe, _S),
    _row("flint", "flint.modeling_flint", "FlintSparseMoeBlock", "gate", _M, _S),
    _row("glm4_moe", "glm4_moe.modeling_glm4_moe", "Glm4MoeMoE", "gate", route_deepseek_v3, _V3),
    _row("glm4_moe_lite", "glm4_moe_lite.modeling_glm4_moe_lite", "Glm4MoeLiteMoE", "gate", route_deepseek_v3, _V3),
    _row("glm_moe_dsa", "glm_moe_dsa.modeling_glm_moe_dsa", "GlmMoeDsaMoE", "gate", route_deepseek_v3, _V3),
    _row("gpt_oss", "gpt_oss.modeling_gpt_oss", "GptOssMLP", "router", _M, _S),
    _row("granitemoe", "granitemoe.modeling_granitemoe", "GraniteMoeMoE", "router", _M, _S),
    _row("granitemoe_swa", "granitemoe_swa.modeling_granitemoe_swa", "GraniteMoeSWAMoE", "router", _M, _S),
    _row("granitemoehybrid", "granitemoehybrid.modeling_granitemoehybrid", "GraniteMoeHybridMoE", "router", _M, _S),
    _row("granitemoeshared", "granitemoeshared.modeling_granitemoeshared", "GraniteMoeSharedMoE", "router", _M, _S),
    _row("hunyuan_v1_moe", "hunyuan_v1_moe.modeling_hunyuan_v1_moe", "HunYuanMoEV1Moe", "gate", _M, _S, router_weight='wg.weight'),
    _row("hy_v3", "hy_v3.modeling_hy_v3", "HYV3MoE", "gate", _M, _S),
    _row("hy_v4", "hy_v4.modeling_hy_v4", "HYV4MoE", "gate", route_deepseek_v3, _V3),
    _row("inkling2_text", "inkling2.modeling_inkling2", "Inkling2SparseMoeBlock", "gate", _M, _V3),
    _row("jamba", "jamba.modeling_jamba", "JambaSparseMoeBlock", "router", _M, _S),
    _row("kimi_linear", "kimi_linear.modeling_kimi_linear", "KimiLinearMoE", "gate", route_deepseek_v3, _V3),
    _row("kolibri1", "kolibri1.modeling_kolibri1", "Kolibri1SparseMoeBlock", "gate", _M, _V3),
    _row("laguna", "laguna.modeling_laguna", "LagunaSparseMoeBlock", "gate", _M, _V3),
    _row("lfm2_moe", "lfm2_moe.modeling_lfm2_moe", "Lfm2MoeSparseMoeBlock", "gate", _M, _S),
    _row("mellum", "mellum.modeling_mellum", "MellumSparseMoeBlock", "gate", route_qwen_olmoe, _S),
    _row("mimo_v2_flash", "mimo_v2_flash.modeling_mimo_v2_flash", "MiMoV2FlashMoE", "gate", route_deepseek_v3, _V3),
    _row("minimax", "minimax.modeling_minimax", "MiniMaxSparseMoeBlock", "gate", route_mixtral, _S),
    _row("minimax_m2", "minimax_m2.modeling_minimax_m2", "MiniMaxM2SparseMoeBlock", "gate", _M, _S),
    _row("minimax_m3_vl_text", "minimax_m3_vl.modeling_minimax_m3_vl", "MiniMaxM3VLSparseMoeBlock", "gate", _M, _V3),
    _row("nemotron_h", "nemotron_h.modeling_nemotron_h", "NemotronHMoE", "gate", route_deepseek_v3, _V3),
    _row("phimoe", "phimoe.modeling_phimoe", "PhimoeSparseMoeBlock", "router", _M, _S),
    _row("qwen3_5_moe_text", "qwen3_5_moe.modeling_qwen3_5_moe", "Qwen3_5MoeSparseMoeBlock", "gate", _M, _S),
    _row("qwen3_next", "qwen3_next.modeling_qwen3_next", "Qwen3NextSparseMoeBlock", "gate", route_qwen_olmoe, _S),
    _row("solar_open", "solar_open.modeling_solar_open", "SolarOpenMoE", "gate", route_deepseek_v3, _V3),
)

# model type -> why it is not covered (tested by tests/unit/test_moe_families.py to stay in sync
# with the enumeration of hfedmoe.moe.catalog)
LEFT_OUT: dict[str, str] = {
    "doge": "no routed expert tensors: 'experts' are product-key embedding rows (cross-domain MoE)",
    "jetmoe": "experts are JetMoeParallelExperts with a different forward (inputs, expert_size); "
              "no top-k index reaches them",
    "llama4_text": "Llama4TextExperts is not a use_experts_implementation class: tokens are scaled by "
                   "the router before the experts and the experts get no top-k index",
    "inkling_text": "InklingExperts' forward takes per-expert gammas instead of top-k index/weights",
    "longcat_flash": "zero-computation experts: router indices beyond the real experts",
    "zaya": "router MLP with an extra (skip) logit column: logits (T, E + 1)",
    "dots3_note_text": "per-layer configs: the tiny random config does not build generically",
    "gemma4_text": "per-layer configs and MoE off by default: the tiny random config does not build",
    "qwen4_exp_text": "indexed attention needs indexer settings: the tiny random config does not build",
    "dots3_note": "composite vision-language config; its text model type is dots3_note_text",
    "gemma4": "composite multimodal config; its text model type is gemma4_text",
    "llama4": "composite multimodal config; its text model type is llama4_text",
    "qwen3_5_moe": "composite multimodal config; its text model type qwen3_5_moe_text is covered",
    "qwen4_exp": "composite multimodal config; its text model type is qwen4_exp_text",
}
