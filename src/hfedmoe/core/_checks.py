"""Argument validation shared by the core functions.

Every check raises ``ValueError`` with a message of the form
``"<argument>: expected <what>, got <actual>"`` so that a caller sees at once which argument is
wrong, what was expected and what arrived. Nothing here mutates its inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch


def shape_str(shape: Sequence[int]) -> str:
    """``(4, 8, 5)``; ``(3,)`` for one dimension."""
    dims = tuple(int(d) for d in shape)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def as_tensor(name: str, value: object) -> torch.Tensor:
    """Accept a tensor, a numpy array or a (nested) list; refuse anything else."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: expected a tensor, got {type(value).__name__}") from exc


def float_tensor(name: str, value: object, ndim: int | None = None, shape_desc: str = "") -> torch.Tensor:
    """A floating-point tensor with ``ndim`` dimensions (``None``: at least one)."""
    x = as_tensor(name, value)
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    _check_ndim(name, x, ndim, shape_desc)
    return x


def bool_tensor(name: str, value: object, ndim: int, shape_desc: str = "") -> torch.Tensor:
    x = as_tensor(name, value)
    if x.dtype != torch.bool:
        raise ValueError(f"{name}: expected a bool tensor, got dtype {x.dtype}")
    _check_ndim(name, x, ndim, shape_desc)
    return x


def _check_ndim(name: str, x: torch.Tensor, ndim: int | None, shape_desc: str) -> None:
    if ndim is None:
        if x.dim() < 1:
            raise ValueError(f"{name}: expected shape {shape_desc or '(N, ...)'}, got {shape_str(x.shape)}")
    elif x.dim() != ndim:
        raise ValueError(f"{name}: expected shape {shape_desc}, got {shape_str(x.shape)}")


def check_dim(name: str, x: torch.Tensor, dim: int, size: int, shape_desc: str, because: str) -> None:
    """``x.shape[dim] == size`` or a message such as
    ``client_experts: expected shape (C, E, ...) with C=3 matching usage, got (4, 8, 5)``."""
    if x.shape[dim] != size:
        raise ValueError(f"{name}: expected shape {shape_desc} with {because}, got {shape_str(x.shape)}")


def check_finite_nonnegative(name: str, x: torch.Tensor) -> None:
    if x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got {_first_bad(x, ~torch.isfinite(x))}")
    if bool((x < 0).any()):
        raise ValueError(f"{name}: expected values >= 0, got {_first_bad(x, x < 0)}")


def _first_bad(x: torch.Tensor, bad: torch.Tensor) -> str:
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f"{x[idx].item()} at index {idx if len(idx) > 1 else idx[0]}"


def real_number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """A finite real number (not a bool) within ``[low, high]`` (either end may be open-ended)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected {_range_desc('a finite number', low, high)}, got {value!r}")
    x = float(value)
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{name}: expected {_range_desc('a float', low, high)}, got {value!r}")
    return x


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _range_desc(what: str, low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{what} in [{_fmt(low)}, {_fmt(high)}]"
    if low is not None:
        return f"{what} >= {_fmt(low)}"
    if high is not None:
        return f"{what} <= {_fmt(high)}"
    return what


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def one_of(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return str(value)


def check_probs(name: str, probs: torch.Tensor) -> None:
    """Values of a probability tensor must lie in [0, 1] (router softmax outputs)."""
    if probs.numel() == 0:
        return
    bad = ~((probs >= 0) & (probs <= 1))  # also catches NaN
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected values in [0, 1] (router softmax probabilities), got {_first_bad(probs, bad)}"
        )
