"""The server optimizer of a run (``federation.server_optimizer``) around any method's aggregation.

:meth:`ServerOptimizer.wrap` returns an :class:`Aggregation` whose ``finish`` lets the method
aggregate as usual, then replaces each changed parameter by one server step
(:func:`hfedmoe.core.server_opt.server_step`) from its value before the round. Parameters (and
elements) the method left unchanged stay bit-identical, so sparse aggregation keeps its meaning.
The state (per parameter ``m``, ``v``, ``n``) persists over rounds and goes into checkpoints
(:meth:`state_tensors` / :meth:`load_state_tensors`).
"""

from __future__ import annotations

from typing import Any

import torch

from hfedmoe.client import ClientUpdate
from hfedmoe.core.server_opt import ServerOptSettings, server_step
from hfedmoe.methods.aggregation import Aggregation
from hfedmoe.moe import MoEModel


def server_opt_settings(cfg: Any) -> ServerOptSettings:
    """The server optimizer of a run config (``federation.server_*``)."""
    f = cfg.federation
    return ServerOptSettings(kind=f.server_optimizer, lr=f.server_lr, momentum=f.server_momentum,
                             beta1=f.server_beta1, beta2=f.server_beta2, tau=f.server_tau)


class ServerOptimizer:
    """Server-side optimizer state of one run (empty for ``kind = 'none'``)."""

    def __init__(self, settings: ServerOptSettings) -> None:
        self.settings = settings
        self.state: dict[str, dict[str, torch.Tensor]] = {}  # parameter name -> m / v / n

    @property
    def active(self) -> bool:
        return self.settings.kind != "none"

    def wrap(self, aggregation: Aggregation, mm: MoEModel) -> Aggregation:
        return _ServerStep(self, aggregation, mm) if self.active else aggregation

    def apply(self, mm: MoEModel, before: dict[str, torch.Tensor]) -> dict[str, float]:
        """One server step on every parameter whose value differs from ``before`` (the global
        weights before the round); returns the number of parameters stepped."""
        stepped = 0
        with torch.no_grad():
            for name, p in mm.model.named_parameters():  # tied weights appear once
                old = before.get(name)
                if old is None or not p.is_floating_point():
                    continue
                cur = {k: v.to(p.device) for k, v in self.state.get(name, {}).items()}
                new, st = server_step(self.settings, old, p.detach(), cur)
                if st is cur:  # nothing changed this round: value and state untouched
                    continue
                self.state[name] = st
                p.copy_(new)
                stepped += 1
        return {"server_opt_params": float(stepped)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{'<m|v|n>/<parameter>': tensor}`` for a checkpoint."""
        return {f"{k}/{name}": t.detach().to("cpu").contiguous() for name, st in self.state.items() for k, t in st.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.state = {}
        for key, t in tensors.items():
            k, name = key.split("/", 1)
            self.state.setdefault(name, {})[k] = t.float()


class _ServerStep(Aggregation):
    def __init__(self, opt: ServerOptimizer, inner: Aggregation, mm: MoEModel) -> None:
        self.opt, self.inner, self.mm = opt, inner, mm

    def add(self, update: ClientUpdate) -> None:
        self.inner.add(update)

    def finish(self) -> dict[str, float]:
        # the model holds the global weights of the round's start here (see methods/aggregation.py)
        before = {n: p.detach().clone() for n, p in self.mm.model.named_parameters() if p.is_floating_point()}
        metrics = self.inner.finish()
        return {**metrics, **self.opt.apply(self.mm, before)}
