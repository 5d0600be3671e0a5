"""Server optimizers on the aggregated update (FedAvgM, FedAdam, FedYogi; Reddi et al. 2021,
"Adaptive Federated Optimization"; Hsu et al. 2019 for FedAvgM), one tensor at a time.

The method's own aggregation gives the new global value ``agg`` of a tensor whose value before the
round was ``old``; the pseudo-gradient is ``delta = agg - old``. Per element touched this round
(``agg != old``: the method changed it), with the element's own state:

- ``avgm``:  ``m = momentum * m + delta`` (``m = delta`` the first time), ``x = old + lr * m``
  (Flower's FedAvgM, whose pseudo-gradient is ``-delta``);
- ``adam``:  ``m = b1 m + (1 - b1) delta``, ``v = b2 v + (1 - b2) delta^2``,
  ``x = old + lr * sqrt(1 - b2^n) / (1 - b1^n) * m / (sqrt(v) + tau)`` with ``n`` the number of
  steps this element took (bias correction as in Flower's FedAdam, counted per element);
- ``yogi``:  as adam with ``v = v - (1 - b2) delta^2 sign(v - delta^2)`` and no bias correction
  (Flower's FedYogi).

Elements the aggregation left unchanged are not touched at all (value and state): an expert that
nobody updated stays bit-identical, as the method's sparse aggregation intends (the "lazy" form of
the optimizers, like sparse Adam). Pure: tensors in, tensors out, no input is mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("none", "avgm", "adam", "yogi")
#: Server learning rate when ``federation.server_lr = 0`` (auto).
DEFAULT_LR = {"none": 1.0, "avgm": 1.0, "adam": 1e-2, "yogi": 1e-2}


@dataclass(frozen=True)
class ServerOptSettings:
    kind: str = "none"
    lr: float = 0.0  # 0 = DEFAULT_LR[kind]
    momentum: float = 0.9  # avgm
    beta1: float = 0.9  # adam, yogi
    beta2: float = 0.99
    tau: float = 1e-3

    @property
    def step_lr(self) -> float:
        return self.lr if self.lr > 0 else DEFAULT_LR[self.kind]


def server_step(
    s: ServerOptSettings, old: torch.Tensor, agg: torch.Tensor, state: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The new value of one tensor (``old.dtype``) and its new optimizer state (float32 tensors of
    ``old``'s shape: ``m``, and for adam/yogi ``v``, ``n``; empty before the first step). ``kind = 'none'``: ``agg``."""
    if s.kind == "none":
        return agg, state
    touched = agg != old  # elements the method's aggregation changed this round
    if not bool(touched.any()):
        return agg, state
    x0 = old.float()
    delta = agg.float() - x0
    zeros = torch.zeros_like(x0)
    m = state.get("m", zeros)
    if s.kind == "avgm":
        m_new = torch.where(touched, s.momentum * m + delta, m)
        x = x0 + s.step_lr * m_new
        new_state = {"m": m_new}
    else:
        n = state.get("n", zeros) + touched.float()  # steps taken per element
        v = state.get("v", zeros)
        m_new = torch.where(touched, s.beta1 * m + (1 - s.beta1) * delta, m)
        d2 = delta * delta
        if s.kind == "adam":
            v_step = s.beta2 * v + (1 - s.beta2) * d2
            k = torch.clamp(n, min=1.0)
            scale = torch.sqrt(1 - s.beta2 ** k) / (1 - s.beta1 ** k)
        elif s.kind == "yogi":
            v_step = v - (1 - s.beta2) * d2 * torch.sign(v - d2)
            scale = torch.ones_like(x0)
        else:
            raise ValueError(f"server optimizer: expected one of {', '.join(KINDS)}, got {s.kind!r}")
        v_new = torch.where(touched, v_step, v)
        x = x0 + s.step_lr * scale * m_new / (torch.sqrt(v_new) + s.tau)
        new_state = {"m": m_new, "v": v_new, "n": n}
    out = torch.where(touched, x.to(old.dtype), old)
    return out, new_state
