"""The only code in the project that knows how MoE families store experts and route tokens.

``wrap(model) -> MoEModel`` addresses experts and routers of a supported model by
``(layer, expert)``; :mod:`hfedmoe.moe.build` makes MoE models (MoEfied BERT, upcycled Llama,
tiny random models for tests).
"""

from hfedmoe.moe.adapter import MoEModel, wrap
from hfedmoe.moe.contexts import LayerRouting, RoutingCapture, TrainOnly
from hfedmoe.moe.layouts import SUPPORTED_FAMILIES

__all__ = ["LayerRouting", "MoEModel", "RoutingCapture", "SUPPORTED_FAMILIES", "TrainOnly", "wrap"]
