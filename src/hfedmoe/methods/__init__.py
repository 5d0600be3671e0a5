"""HFedMoE and its peers, each a small class over the shared core functions."""

from __future__ import annotations

from typing import Any

from hfedmoe.errors import HFedMoEError
from hfedmoe.methods.base import ClientInfo, Method
from hfedmoe.methods.bounds import FedAvgFit, FedAvgFull, OracleGradNorm
from hfedmoe.methods.fedavg import Centralized, FedAvg, FedAvgDrop
from hfedmoe.methods.fedmoe import FedMoE
from hfedmoe.methods.fftmoe import FFTMoE
from hfedmoe.methods.flexmoe import FlexMoE
from hfedmoe.methods.frequency import FluxFreq, RandomExperts, RandomRound
from hfedmoe.methods.hfedmoe import HFedMoE
from hfedmoe.methods.restrict import HFedMoERestrict


def _hfedmoe(mcfg: Any, *, name: str = "hfedmoe", cls: type = HFedMoE, **extra: Any) -> Method:
    opts = dict(lam=mcfg.lam, beta=mcfg.beta, tau=mcfg.tau, budget_scope=mcfg.budget_scope,
                gate_weights=mcfg.gate_weights, pooling=mcfg.pooling, ib_scale=mcfg.ib_scale)
    opts.update(extra)
    method = cls(**opts)
    method.name = name
    return method


def _ablation(name: str, **extra: Any) -> Any:
    return lambda mcfg: _hfedmoe(mcfg, name=name, **extra)


# name -> factory(method config) ; baselines and ablations register here too.
METHODS: dict[str, Any] = {
    "hfedmoe": _hfedmoe,
    "fedavg": lambda mcfg: FedAvg(),
    "fedavg-drop": lambda mcfg: FedAvgDrop(),
    "fedmoe": lambda mcfg: FedMoE(budget_scope=mcfg.budget_scope),
    "flux-freq": lambda mcfg: FluxFreq(budget_scope=mcfg.budget_scope),
    "flex-moe": lambda mcfg: FlexMoE(budget_scope=mcfg.budget_scope),
    "fft-moe": lambda mcfg: FFTMoE(budget_scope=mcfg.budget_scope, aux_weight=getattr(mcfg, "aux_weight", 0.01)),
    "random": lambda mcfg: RandomExperts(budget_scope=mcfg.budget_scope),
    "random-round": lambda mcfg: RandomRound(budget_scope=mcfg.budget_scope),
    "centralized": lambda mcfg: Centralized(),
    # bounds: selection oracle, no-budget reference, budget-respecting FedAvg
    "oracle": lambda mcfg: OracleGradNorm(budget_scope=mcfg.budget_scope),
    "fedavg-full": lambda mcfg: FedAvgFull(),
    "fedavg-fit": lambda mcfg: FedAvgFit(budget_scope=mcfg.budget_scope),
    # ablations: HFedMoE with one switch changed
    "hfedmoe-no-ib": _ablation("hfedmoe-no-ib", beta=0.0),
    "hfedmoe-avg": _ablation("hfedmoe-avg", expert_aggregation="uniform"),
    "hfedmoe-uniform-gate": _ablation("hfedmoe-uniform-gate", gate_weights="uniform"),
    "hfedmoe-literal": _ablation("hfedmoe-literal", gate_weights="paper-literal"),
    "hfedmoe-restrict": _ablation("hfedmoe-restrict", cls=HFedMoERestrict),
    "hfedmoe-token": _ablation("hfedmoe-token", pooling="token"),  # a sample of Eqs. 3-5, 14 = a token
}


def make_method(mcfg: Any) -> Method:
    """The method named by ``mcfg.name`` with the knobs of ``mcfg`` (a MethodConfig)."""
    try:
        factory = METHODS[mcfg.name]
    except KeyError:
        raise HFedMoEError(f"method.name: expected one of {', '.join(METHODS)}, got {mcfg.name!r}") from None
    return factory(mcfg)


__all__ = ["ClientInfo", "HFedMoE", "METHODS", "Method", "make_method"]
