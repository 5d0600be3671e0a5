"""What the adapter's contexts and installed forwards need from the adapter.

``contexts`` and ``hooks`` type against this protocol instead of importing ``adapter`` (which imports
them), so the three modules form no import circle, not even a type-only one.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class AdapterCore(Protocol):
    """The slice of :class:`hfedmoe.moe.adapter.MoEModel` that contexts and hooks use."""

    num_layers: int
    num_experts: int
    top_k: int
    _layers: list[Any]  # list[contexts._Layer], one per MoE layer in forward order
    _masks: dict[str, torch.Tensor | None]
    _leaves: dict[int, list[list[torch.Tensor]]]

    def _is_active(self) -> bool: ...

    def _innermost(self, kind: str) -> Any: ...

    def _push(self, kind: str, ctx: Any) -> None: ...

    def _pop(self, kind: str, ctx: Any) -> None: ...

    def _route(self, layer: int, router: nn.Module, args: tuple, kwargs: dict) -> Any: ...

    def _router_device(self, info: Any) -> torch.device: ...

    def expert_leaves(self) -> dict[tuple[int, int], list[torch.Tensor]]: ...
