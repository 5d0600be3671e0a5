"""HFedMoE and its peers, each a small class over the shared core functions."""

from __future__ import annotations

from typing import Any

from hfedmoe.errors import HFedMoEError
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.methods.hfedmoe import HFedMoE


def _hfedmoe(mcfg: Any, **extra: Any) -> Method:
    return HFedMoE(lam=mcfg.lam, beta=mcfg.beta, tau=mcfg.tau, budget_scope=mcfg.budget_scope,
                   gate_weights=mcfg.gate_weights, **extra)


# name -> factory(method config) ; baselines and ablations register here too.
METHODS: dict[str, Any] = {
    "hfedmoe": _hfedmoe,
}


def make_method(mcfg: Any) -> Method:
    """The method named by ``mcfg.name`` with the knobs of ``mcfg`` (a MethodConfig)."""
    try:
        factory = METHODS[mcfg.name]
    except KeyError:
        raise HFedMoEError(f"method.name: expected one of {', '.join(METHODS)}, got {mcfg.name!r}") from None
    return factory(mcfg)


__all__ = ["ClientInfo", "HFedMoE", "METHODS", "Method", "make_method"]
