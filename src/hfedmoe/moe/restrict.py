"""Restricted routing for any router, by running the family's own router forward under a mask.

:func:`route_masked` is the generic route function of the family table (``families.py``): instead
of re-implementing a router, it calls the router's own forward inside a
:class:`torch.overrides.TorchFunctionMode` that, for that call only,

* sets the router logits of experts outside ``allowed_mask`` to ``-inf``: the result of any
  ``linear`` / ``mm`` / ``matmul`` whose last dimension is the number of experts (the logits; a
  router computes no other ``(..., E)`` product), so softmax gives them probability 0 and sigmoid
  score 0;
* sets the same experts to ``-inf`` in the input of any ``topk`` over a last dimension of size E
  (the expert choice: this also covers choice scores that add a correction bias to a sigmoid, or
  that are logits passed through ``tanh`` soft-capping, where a masked logit alone is not enough).

Everything else is the family's own code (softmax or sigmoid, renormalisation, scaling, capping,
sparsemixer, groups). Group-limited routers (``num_group`` / ``topk_group``) may pick a group
holding fewer than ``top_k`` allowed experts; for those tokens the router runs again with the group
limit lifted (``topk_group = num_group``), as the hand-written DeepSeek route functions do. A
forbidden expert that still reaches the top-k is an :class:`UnsupportedModelError` naming the
router class, never a silent wrong route.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from hfedmoe.errors import UnsupportedModelError

_PRODUCTS = {torch.nn.functional.linear, torch.mm, torch.matmul, torch.Tensor.mm, torch.Tensor.matmul,
             torch.Tensor.__matmul__}
_TOPK = {torch.topk, torch.Tensor.topk}


class _ExpertMask(TorchFunctionMode):
    """Masks ``(..., E)`` router products and top-k inputs to ``-inf`` outside ``allowed`` (E,)."""

    def __init__(self, allowed: torch.Tensor):
        super().__init__()
        self.forbidden = ~allowed.bool()  # (E,)
        self.num_experts = int(allowed.numel())

    def _mask(self, t):
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.num_experts \
                and t.is_floating_point():
            return t.masked_fill(self.forbidden.to(t.device), float("-inf"))
        return t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TOPK and args:
            x = args[0]
            dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
            if isinstance(x, torch.Tensor) and dim in (-1, x.dim() - 1):
                args = (self._mask(x), *args[1:])
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        return self._mask(out) if func in _PRODUCTS else out


def _indices(output) -> torch.Tensor:
    return output[2]  # (logits, weights, indices): every fused family's router output


def _call(router, args, kwargs, allowed):
    with _ExpertMask(allowed):
        return type(router).forward(router, *args, **kwargs)


def route_masked(router, args: tuple, kwargs: dict, allowed_mask: torch.Tensor):
    """The router's own output ``(logits, weights, indices)`` with routing restricted to
    ``allowed_mask`` (E,) bool; indices ``(T, k)`` lie in the allowed set (see module doc)."""
    output = _call(router, args, kwargs, allowed_mask)
    idx = _indices(output)
    allowed = allowed_mask.to(idx.device)
    bad = ~allowed[idx].all(dim=-1)  # (T,)
    if bool(bad.any()) and hasattr(router, "topk_group") and hasattr(router, "num_group"):
        saved = router.topk_group
        try:
            router.topk_group = router.num_group  # the group limit lifted
            lifted = _call(router, args, kwargs, allowed_mask)
        finally:
            router.topk_group = saved
        output = tuple(
            torch.where(bad.view(-1, *([1] * (a.dim() - 1))), b, a) if i > 0 else a
            for i, (a, b) in enumerate(zip(output, lifted))
        )
        idx = _indices(output)
        bad = ~allowed[idx].all(dim=-1)
    if bool(bad.any()):
        raise UnsupportedModelError(
            f"restrict_routing: {type(router).__name__} routed {int(bad.sum())} tokens to experts "
            f"outside the allowed subset {allowed.nonzero().flatten().tolist()} despite masking"
        )
    return output


route_masked.calls_router = True  # adapter._route passes (router, args, kwargs, allowed)
