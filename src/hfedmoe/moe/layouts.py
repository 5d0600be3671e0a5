"""Per-family facts: where routers and experts live and how tokens are routed (how one expert
computes outside its family's forward: :mod:`hfedmoe.moe.expert_compute`).

This is the only module that knows the internals of each supported MoE family. Everything else in
the project goes through :class:`hfedmoe.moe.adapter.MoEModel`.

Two expert storage kinds exist:

``"fused"``
    One module holds every expert as 3-D tensors, expert ``e`` is slice ``[e]``
    (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3, the MoEfied BERT of ``minilm.py``).
    transformers decorates these classes with ``use_experts_implementation``, which records the
    layout on the instance (``has_gate``, ``has_bias``, ``is_transposed``) and dispatches the
    forward through ``config._experts_implementation`` (``grouped_mm`` by default).
``"modules"``
    One sub-module per expert (Switch Transformers: ``experts.expert_{i}.wi/wo``).

Route functions
---------------
``route(router, hidden_states, allowed_mask)`` re-implements the family's router forward with an
optional restriction: experts outside ``allowed_mask`` get logit ``-inf`` before top-k and then the
family's own rule (top-k, renormalisation, groups, scaling, capacity) applies. With
``allowed_mask=None`` each route function computes exactly what the family's own router computes
(tested for every family). A route function returns a :class:`Routed`: the tuple the family's
router returns, the per-token probabilities ``(T, E)`` and the chosen experts ``(T, k)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

FUSED_PARAM_NAMES = (
    "gate_up_proj",
    "gate_up_proj_bias",
    "up_proj",
    "up_proj_bias",
    "down_proj",
    "down_proj_bias",
)


class Routed(NamedTuple):
    """Result of one route function call.

    Attributes
    ----------
    router_output : tuple
        Exactly what the family's router forward returns (so the MoE block can consume it).
    gate_probs : Tensor
        ``(T, E)`` float32 per-token router probabilities (restricted experts get 0).
    topk_idx : Tensor
        ``(T, k)`` long, the experts each token is routed to.
    """

    router_output: tuple
    gate_probs: torch.Tensor
    topk_idx: torch.Tensor


# --------------------------------------------------------------------------------------------
# route functions
# --------------------------------------------------------------------------------------------
def _mask_logits(logits: torch.Tensor, allowed_mask: torch.Tensor | None) -> torch.Tensor:
    if allowed_mask is None:
        return logits
    return logits.masked_fill(~allowed_mask.to(logits.device), float("-inf"))


def route_softmax_topk(
    router: nn.Module,
    hidden_states: torch.Tensor,
    allowed_mask: torch.Tensor | None,
    *,
    renormalize: bool,
    cast_to_logits_dtype: bool,
) -> Routed:
    """Softmax → top-k → optional renormalisation (Mixtral, Qwen2/3-MoE, OLMoE).

    Mixtral always renormalises and keeps the weights in float32; the Qwen/OLMoE routers
    renormalise iff ``norm_topk_prob`` and cast the weights back to the logits dtype.
    """
    hidden_states = hidden_states.reshape(-1, router.hidden_dim)  # (T, H)
    router_logits = _mask_logits(F.linear(hidden_states, router.weight), allowed_mask)  # (T, E)
    router_probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)  # (T, E)
    top_value, top_idx = torch.topk(router_probs, router.top_k, dim=-1)  # (T, k)
    if renormalize:
        top_value = top_value / top_value.sum(dim=-1, keepdim=True)
    if cast_to_logits_dtype:
        top_value = top_value.to(router_logits.dtype)
    return Routed((router_logits, top_value, top_idx), router_probs, top_idx)


def route_mixtral(router, hidden_states, allowed_mask):
    """Mixtral: softmax, top-k, always renormalised, float32 weights."""
    return route_softmax_topk(
        router, hidden_states, allowed_mask, renormalize=True, cast_to_logits_dtype=False
    )


def route_qwen_olmoe(router, hidden_states, allowed_mask):
    """Qwen2-MoE / Qwen3-MoE / OLMoE: softmax, top-k, renormalised iff ``norm_topk_prob``."""
    return route_softmax_topk(
        router,
        hidden_states,
        allowed_mask,
        renormalize=bool(router.norm_topk_prob),
        cast_to_logits_dtype=True,
    )


def route_straight_through(router, hidden_states, allowed_mask):
    """MoEfied BERT: softmax, top-k, combination weight ``1 + p - p.detach()`` (value exactly 1), or
    with ``router.combine == "topk-prob"`` the renormalised top-k probabilities times ``k`` (Eq. 2).

    With ``top_k == E`` the block therefore equals the dense FFN it was split from, while the
    router still receives the gradient it would get if the experts were weighted by ``p``.
    """
    hidden_states = hidden_states.reshape(-1, router.hidden_dim)  # (T, H)
    router_logits = _mask_logits(F.linear(hidden_states, router.weight), allowed_mask)  # (T, E)
    router_probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)  # (T, E)
    top_value, top_idx = torch.topk(router_probs, router.top_k, dim=-1)  # (T, k)
    if getattr(router, "combine", "straight-through") == "topk-prob":
        # Eq. 2: renormalised top-k probabilities, times the constant k so that equal
        # probabilities give straight-through's weight 1 (the constant is absorbed by the experts)
        top_weight = top_value / top_value.sum(dim=-1, keepdim=True) * router.top_k  # (T, k)
        return Routed((router_logits, top_weight.to(router_logits.dtype), top_idx), router_probs, top_idx)
    top_weight = (1.0 + top_value - top_value.detach()).to(router_logits.dtype)  # (T, k) == 1
    return Routed((router_logits, top_weight, top_idx), router_probs, top_idx)


def route_adapter(router, hidden_states, allowed_mask):
    """MoE adapters (:mod:`hfedmoe.moe.sparse_adapter`): softmax, top-k, renormalised top-k
    probabilities as combination weights (in the logits' dtype)."""
    return route_softmax_topk(
        router, hidden_states, allowed_mask, renormalize=True, cast_to_logits_dtype=True
    )


def _lift_group_limit(
    top_idx: torch.Tensor,
    choice_scores: torch.Tensor,
    allowed_mask: torch.Tensor | None,
    k: int,
) -> torch.Tensor:
    """Where the group limit left a token fewer than k allowed experts, pick among all allowed."""
    if allowed_mask is None:
        return top_idx
    allowed = allowed_mask.to(top_idx.device)
    bad = ~allowed[top_idx].all(dim=-1)  # (T,)
    if not bool(bad.any()):
        return top_idx
    fallback = torch.topk(choice_scores, k=k, dim=-1, sorted=False)[1]  # (T, k)
    return torch.where(bad[:, None], fallback, top_idx)


def route_deepseek_v2(router, hidden_states, allowed_mask):
    """DeepSeek-V2: softmax; ``greedy`` or ``group_limited_greedy`` top-k; ``routed_scaling_factor``.

    Under a restriction, if the chosen groups hold fewer than ``top_k`` allowed experts for a
    token, the group limit is lifted for that token (top-k over all allowed experts).
    """
    hidden_states = hidden_states.view(-1, router.hidden_dim)  # (T, H)
    router_logits = F.linear(hidden_states.type(torch.float32), router.weight.type(torch.float32))
    router_logits = _mask_logits(router_logits, allowed_mask)  # (T, E)
    scores = router_logits.softmax(dim=-1, dtype=torch.float32)  # (T, E)
    if router.topk_method == "greedy":
        topk_weights, topk_idx = torch.topk(scores, k=router.top_k, dim=-1, sorted=False)
    elif router.topk_method == "group_limited_greedy":
        num_group, group_size = router.num_group, router.num_experts // router.num_group
        group_scores = scores.view(-1, num_group, group_size).max(dim=-1).values  # (T, G)
        group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores)
        group_mask.scatter_(1, group_idx, 1)
        score_mask = group_mask.unsqueeze(-1).expand(-1, num_group, group_size).reshape(-1, router.num_experts)
        grouped = scores.masked_fill(~score_mask.bool(), 0.0)
        topk_weights, topk_idx = torch.topk(grouped, k=router.top_k, dim=-1, sorted=False)
        lifted = _lift_group_limit(topk_idx, scores, allowed_mask, router.top_k)
        if lifted is not topk_idx:
            topk_idx, topk_weights = lifted, scores.gather(1, lifted)
    else:  # pragma: no cover - transformers only defines the two methods above
        raise ValueError(f"unknown DeepSeek-V2 topk_method {router.topk_method!r}")
    topk_weights = topk_weights * router.routed_scaling_factor
    return Routed((router_logits, topk_weights, topk_idx), scores, topk_idx)


def route_deepseek_v3(router, hidden_states, allowed_mask):
    """DeepSeek-V3: sigmoid scores + ``e_score_correction_bias`` for choice, group limit, norm, scale.

    ``gate_probs`` are the sigmoid scores normalised to sum 1 per token (the router itself never
    forms a distribution). A restricted expert gets score 0 and choice score ``-inf``; if the chosen
    groups hold fewer than ``top_k`` allowed experts the group limit is lifted for that token.
    """
    hidden_states = hidden_states.view(-1, router.hidden_dim)  # (T, H)
    router_logits = F.linear(hidden_states.type(torch.float32), router.weight.type(torch.float32))
    router_logits = _mask_logits(router_logits, allowed_mask)  # (T, E)
    scores = router_logits.sigmoid()  # (T, E), 0 where restricted
    scores_for_choice = scores + router.e_score_correction_bias
    if allowed_mask is not None:
        scores_for_choice = _mask_logits(scores_for_choice, allowed_mask)
    num_group, group_size = router.num_group, router.num_experts // router.num_group
    group_scores = scores_for_choice.view(-1, num_group, group_size).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]  # (T, g)
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, num_group, group_size).reshape(-1, router.num_experts)
    grouped_choice = scores_for_choice.masked_fill(~score_mask.bool(), float("-inf"))
    topk_idx = torch.topk(grouped_choice, k=router.top_k, dim=-1, sorted=False)[1]  # (T, k)
    topk_idx = _lift_group_limit(topk_idx, scores_for_choice, allowed_mask, router.top_k)
    topk_weights = scores.gather(1, topk_idx)
    if router.norm_topk_prob:
        denominator = topk_weights.sum(dim=-1, keepdim=True) + 1e-20
        topk_weights /= denominator
    topk_weights = topk_weights * router.routed_scaling_factor
    return Routed((router_logits, topk_weights, topk_idx), sigmoid_probs(scores), topk_idx)


def sigmoid_probs(scores: torch.Tensor) -> torch.Tensor:
    """Sigmoid scores ``(T, E)`` → per-token distribution (sum 1), float32."""
    scores = scores.float()
    return scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-20)


def route_switch(router, hidden_states, allowed_mask):
    """Switch Transformers: softmax in ``router_dtype``, argmax (top-1), per-sequence capacity.

    ``topk_idx`` is the argmax even for tokens dropped by the capacity limit (drops are ignored in
    the captured routing; the block itself still drops them exactly like transformers).
    """
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(router.dtype)  # (B, S, H)
    if router.training and router.jitter_noise > 0:
        noise = torch.empty_like(hidden_states).uniform_(1.0 - router.jitter_noise, 1.0 + router.jitter_noise)
        hidden_states = hidden_states * noise
    router.classifier = router.classifier.to(router.dtype)
    router_logits = _mask_logits(router.classifier(hidden_states), allowed_mask)  # (B, S, E)
    router_probs = F.softmax(router_logits, dim=-1, dtype=router.dtype).to(input_dtype)  # (B, S, E)
    expert_idx = torch.argmax(router_probs, dim=-1)  # (B, S)
    expert_onehot = F.one_hot(expert_idx, num_classes=router.num_experts)  # (B, S, E)
    token_priority = torch.cumsum(expert_onehot, dim=-2)
    expert_onehot = expert_onehot * (token_priority <= router.expert_capacity)
    top_prob = torch.max(router_probs, dim=-1).values.unsqueeze(-1)  # (B, S, 1)
    num_experts = router.num_experts
    return Routed(
        (expert_onehot, top_prob, router_logits),
        router_probs.reshape(-1, num_experts).float(),
        expert_idx.reshape(-1, 1),
    )


# --------------------------------------------------------------------------------------------
# probabilities / indices from an unrestricted router output (the family's own forward)
# --------------------------------------------------------------------------------------------
def _softmax_from_output(router, output):
    logits = output[0]
    return torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1, dtype=torch.float), output[2]


def _v3_from_output(router, output):
    logits = output[0]
    return sigmoid_probs(logits.reshape(-1, logits.shape[-1]).sigmoid()), output[2]


def _switch_from_output(router, output):
    logits = output[2]  # (B, S, E)
    probs = F.softmax(logits, dim=-1, dtype=router.dtype).reshape(-1, logits.shape[-1]).float()
    return probs, torch.argmax(logits, dim=-1).reshape(-1, 1)


# --------------------------------------------------------------------------------------------
# family table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilySpec:
    """Static facts about one MoE family.

    Attributes
    ----------
    name : str
        Family name used across the project (``"mixtral"``, ``"switch"``, ...).
    block_class : tuple[str, str]
        ``(module path, class name)`` of the MoE block (the module holding router and experts).
    router_attr, experts_attr : str
        Attribute names of the router and of the experts inside the block.
    kind : str
        ``"fused"`` or ``"modules"``.
    route : Callable
        Route function ``(router, hidden_states, allowed_mask) -> Routed``.
    from_output : Callable
        ``(router, router_output) -> (gate_probs (T, E), topk_idx (T, k))`` for the family's own
        (unrestricted) router forward.
    router_weight : str
        Dotted path of the ``(E, H)`` router weight inside a fused-kind router (``route`` None:
        restricted routing is not available for the family).
    """

    name: str
    block_class: tuple[str, str]
    router_attr: str
    experts_attr: str
    kind: str
    route: Callable | None
    from_output: Callable
    router_weight: str = "weight"


_TF = "transformers.models"
FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("mixtral", (f"{_TF}.mixtral.modeling_mixtral", "MixtralSparseMoeBlock"),
               "gate", "experts", "fused", route_mixtral, _softmax_from_output),
    FamilySpec("qwen2_moe", (f"{_TF}.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeSparseMoeBlock"),
               "gate", "experts", "fused", route_qwen_olmoe, _softmax_from_output),
    FamilySpec("qwen3_moe", (f"{_TF}.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeSparseMoeBlock"),
               "gate", "experts", "fused", route_qwen_olmoe, _softmax_from_output),
    FamilySpec("olmoe", (f"{_TF}.olmoe.modeling_olmoe", "OlmoeSparseMoeBlock"),
               "gate", "experts", "fused", route_qwen_olmoe, _softmax_from_output),
    FamilySpec("deepseek_v2", (f"{_TF}.deepseek_v2.modeling_deepseek_v2", "DeepseekV2Moe"),
               "gate", "experts", "fused", route_deepseek_v2, _softmax_from_output),
    FamilySpec("deepseek_v3", (f"{_TF}.deepseek_v3.modeling_deepseek_v3", "DeepseekV3MoE"),
               "gate", "experts", "fused", route_deepseek_v3, _v3_from_output),
    FamilySpec("switch", (f"{_TF}.switch_transformers.modeling_switch_transformers",
                          "SwitchTransformersSparseMLP"),
               "router", "experts", "modules", route_switch, _switch_from_output),
    FamilySpec("minilm_moe", ("hfedmoe.moe.minilm", "MoEFeedForward"),
               "gate", "experts", "fused", route_straight_through, _softmax_from_output),
    FamilySpec("moe_adapter", ("hfedmoe.moe.sparse_adapter", "MoEAdapterBlock"),
               "gate", "experts", "fused", route_adapter, _softmax_from_output),
)


def block_classes() -> dict[tuple[str, str], FamilySpec]:
    """``(module, class name)`` of each family's MoE block → its spec (no imports: a model's
    classes are matched by name, so covering 50 families costs nothing per ``wrap``)."""
    return {spec.block_class: spec for spec in FAMILIES}


def family_of_block(module: nn.Module, classes: Mapping[tuple[str, str], FamilySpec]) -> FamilySpec | None:
    """The family whose MoE block ``module`` is (exact class match), or None."""
    return classes.get((type(module).__module__, type(module).__name__))


def router_num_experts(spec: FamilySpec, router: nn.Module) -> int:
    if spec.kind == "modules":
        return int(router.num_experts)
    return int(router_weight(spec, router).shape[0])


def router_top_k(spec: FamilySpec, router: nn.Module) -> int:
    if spec.name == "switch":
        return 1
    return int(router.top_k)


def router_weight(spec: FamilySpec, router: nn.Module) -> nn.Parameter:
    """The live ``(E, H)`` router weight."""
    return router.classifier.weight if spec.kind == "modules" else router.get_parameter(spec.router_weight)


def router_trainable(spec: FamilySpec, router: nn.Module) -> dict[str, nn.Parameter]:
    """Local name → Parameter of the router's trainable tensors (weight, bias when present)."""
    if spec.kind == "modules":
        out = {"classifier.weight": router.classifier.weight}
        if router.classifier.bias is not None:
            out["classifier.bias"] = router.classifier.bias
        return out
    return dict(router.named_parameters())


def fused_param_names(experts: nn.Module, num_experts: int) -> list[str]:
    """Local names of the fused ``(E, ...)`` expert tensors, in registration order."""
    return [
        name
        for name, p in experts.named_parameters(recurse=False)
        if name in FUSED_PARAM_NAMES and p.dim() >= 2 and p.shape[0] == num_experts
    ]


def switch_param_names(experts: nn.Module) -> list[str]:
    """Local names (inside ``expert_{i}``) of one Switch expert's tensors."""
    return [name for name, _ in experts["expert_0"].named_parameters()]


# the table of further transformers families lives in families.py (imports the functions above)
from hfedmoe.moe.families import TRANSFORMERS_FAMILIES  # noqa: E402

FAMILIES = FAMILIES + TRANSFORMERS_FAMILIES
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILIES)
