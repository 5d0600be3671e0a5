"""How far an honest client can move the weights in one round, from its optimizer alone (pure).

AdamW (PyTorch: ``p <- p (1 - lr wd)``, then ``p <- p - lr m_hat / (sqrt(v_hat) + eps)``) moves a
coordinate by at most ``lr B(t) + lr wd |p|`` in step ``t``, whatever the gradients, where (Cauchy-
Schwarz on the moment sums, ``r = beta1^2 / beta2``)::

    |m_hat_t| / sqrt(v_hat_t) <= B(t) = (1 - beta1) / (1 - beta1^t)
                                         * sqrt(1 - beta2^t) / sqrt(1 - beta2)
                                         * sqrt(sum_{k < t} r^k)

(``B(1) = 1``, ``B(2) = 1.0014``, ``B(10) = 1.043``, ``B(1000) = 5.78``, growing to 7.27 at the
default betas). The client evicts an
expert's optimizer state when the expert is not trained in a step (``client/state.py``), so ``t``
restarts; ``B_max = max_{t <= steps} B(t)`` bounds every step. Rounding to the parameter dtype adds
at most ``eps_dtype |p|`` per step. Over ``steps`` steps, with ``a = steps (lr wd + eps_dtype)``
(< 1) and the global tensors ``g``::

    |u - g|_inf <= (steps lr B_max + a max|g|) / (1 - a)
    |u - g|_2   <= (steps lr B_max sqrt(d) + a |g|_2) / (1 - a)

(``steps lr B_max`` times :data:`FLOAT_SLACK`). Measured on the tiny preset (2 local steps, and one
epoch): honest updates reach 0.98-1.00 of the per-coordinate bound and 0.09-0.14 of the L2 bound.

An update beyond either bound was not produced by this optimizer from these weights: the server
rejects it in any round, history or not. SGD has no such bound (its step is the gradient's size):
:func:`adamw_distance_bounds` is only for AdamW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ADAMW_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which the client uses (client/train.py)
# The step itself is computed in the parameters' precision (lr * m_hat / (sqrt(v_hat) + eps) in
# float32 is lr B(t) to ~1e-7 relative, not exactly): honest first steps reach the bound (Adam's first
# step moves every coordinate with a gradient by exactly lr), so the bound carries this margin.
FLOAT_SLACK = 1.0 + 1e-3


def adam_step_factor(t: int, beta1: float = ADAMW_BETAS[0], beta2: float = ADAMW_BETAS[1]) -> float:
    """``B(t)``: the largest ``|m_hat_t / sqrt(v_hat_t)|`` any gradient sequence can give at step t >= 1."""
    if t < 1:
        raise ValueError(f"t: expected an integer >= 1, got {t}")
    r = beta1 * beta1 / beta2
    geometric = float(t) if r == 1.0 else (1.0 - r**t) / (1.0 - r)
    return ((1.0 - beta1) / (1.0 - beta1**t)) * math.sqrt((1.0 - beta2**t) / (1.0 - beta2)) * math.sqrt(geometric)


@dataclass(frozen=True)
class StepBounds:
    """The largest change of one coordinate and of the whole update an honest client can upload."""

    max_abs: float  # |u - g|_inf
    l2: float  # |u - g|_2


def adamw_distance_bounds(lr: float, steps: int, weight_decay: float, dtype_eps: float,
                          global_max_abs: float, global_norm: float, dims: int) -> StepBounds:
    """The module's bounds for ``steps`` AdamW steps on ``dims`` coordinates starting at ``g``.

    ``dtype_eps``: ``torch.finfo(dtype).eps`` of the parameters (rounding per step).
    """
    if steps < 1:
        return StepBounds(0.0, 0.0)
    if steps <= 10_000:
        b_max = max(adam_step_factor(t) for t in range(1, steps + 1))
    else:  # B(t) <= its t -> inf limit times 1 / (1 - beta1^t), which is 1 to double precision here
        b1, b2 = ADAMW_BETAS
        b_max = (1.0 - b1) / math.sqrt((1.0 - b2) * (1.0 - b1 * b1 / b2))
    a = steps * (lr * weight_decay + dtype_eps)
    if a >= 1.0:  # decay or rounding alone could move a weight by its whole size: no useful bound
        return StepBounds(math.inf, math.inf)
    move = steps * lr * b_max * FLOAT_SLACK
    return StepBounds(max_abs=(move + a * global_max_abs) / (1.0 - a),
                      l2=(move * math.sqrt(dims) + a * global_norm) / (1.0 - a))
