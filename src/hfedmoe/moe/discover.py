"""Find the MoE layers of a model from the family layouts (``moe/layouts.py``): the one place that
turns a module tree into the adapter's per-layer records."""

from __future__ import annotations

from torch import nn

from hfedmoe.moe import layouts
from hfedmoe.moe.contexts import _Layer


def find_layers(model: nn.Module) -> list[_Layer]:
    """The MoE layers of ``model`` in forward (module) order, each with its family layout, router,
    experts module, expert count, top-k and expert parameter names; empty when there is none."""
    classes = layouts.block_classes()
    layers: list[_Layer] = []
    for path, module in model.named_modules():
        spec = layouts.family_of_block(module, classes)
        if spec is None:
            continue
        router = getattr(module, spec.router_attr)
        experts = getattr(module, spec.experts_attr)
        num_experts = layouts.router_num_experts(spec, router)
        if spec.kind == "fused":
            names = layouts.fused_param_names(experts, num_experts)
        else:
            names = layouts.switch_param_names(experts)
        role = None
        if spec.name == "switch":
            role = "decoder" if path.startswith("decoder") or ".decoder." in f".{path}" else "encoder"
        layers.append(
            _Layer(len(layers), spec, path, module, router, experts, role, num_experts,
                   layouts.router_top_k(spec, router), names)
        )
    return layers
