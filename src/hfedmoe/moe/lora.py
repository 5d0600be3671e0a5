"""LoRA on fused experts (PEFT 0.21 ``target_parameters``): per-expert slices and their aggregation.

PEFT wraps a fused expert tensor ``(E, d0, d1)`` in ``ParamWrapper`` with ``lora_A.weight
(E*r, in)`` and ``lora_B.weight (out, E*r)``. Read from PEFT's own ``get_delta_weight`` (and
checked against it in ``tests/unit/test_moe_lora.py``):

* expert e's ``A_e (r, in)`` is rows ``e*r:(e+1)*r`` of ``lora_A`` (``reshape(E, r, in)``);
* expert e's ``B_e (out, r)`` is columns ``e::E`` of ``lora_B`` (``reshape(out, r, E)``);
* ``delta_e = scaling * B_e @ A_e`` is ``(out, in)``; PEFT stores it as ``(d0, d1)`` = ``(in, out)``
  of the parameter unless it swapped in/out (``_did_swap_in_out_features``: Mixtral-style
  ``(E, out, in)`` storage), in which case ``delta_e`` has the parameter's layout directly.

This module is the one owner of that slicing.

Aggregation
-----------
Averaging ``A`` and ``B`` separately is not the average of the updates: ``mean(B) @ mean(A) !=
mean(B @ A)``. :func:`aggregate_expert_lora` averages the *products* ``B_e^c @ A_e^c`` with the
clients' weights and re-factorises the average by a truncated SVD at rank ``r``
(``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``). This is exact whenever the averaged update has
rank <= r (e.g. one client, or clients whose updates share an r-dimensional subspace), and
otherwise the best rank-r approximation in Frobenius norm (Eckart-Young). The alternative,
stacking the factors (rank grows with the number of clients), is exact but changes the adapter's
shape every round, which a PEFT directory with one ``r`` cannot hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int) -> int:
    if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise ValueError(f"lora_A (E*r, in) and lora_B (out, E*r) expected, got {tuple(lora_a.shape)} and "
                         f"{tuple(lora_b.shape)}")
    if lora_a.shape[0] % num_experts:
        raise ValueError(f"lora_A has {lora_a.shape[0]} rows, not a multiple of num_experts={num_experts}")
    return lora_a.shape[0] // num_experts


def expert_views(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, idx: int):
    """Live views ``(A_e (r, in), B_e (out, r))`` of expert ``idx`` in the storage of ``lora_A`` /
    ``lora_B`` (detached; ``B_e`` is strided). In-place writes to them (an optimizer step) change
    only that expert's rows / columns."""
    r = _check(lora_a, lora_b, num_experts)
    return lora_a.detach()[idx * r:(idx + 1) * r], lora_b.detach()[:, idx::num_experts]


def get_expert_lora(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, idx: int):
    """``(A_e (r, in), B_e (out, r))`` of expert ``idx``: clones."""
    a_e, b_e = expert_views(lora_a, lora_b, num_experts, idx)
    return a_e.clone(), b_e.clone()


def set_expert_lora(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, idx: int,
                    a_e: torch.Tensor, b_e: torch.Tensor) -> None:
    """Write expert ``idx``'s slices in place (other experts untouched)."""
    r = _check(lora_a, lora_b, num_experts)
    if tuple(a_e.shape) != (r, lora_a.shape[1]) or tuple(b_e.shape) != (lora_b.shape[0], r):
        raise ValueError(f"expert slices must be ({r}, {lora_a.shape[1]}) and ({lora_b.shape[0]}, {r}), got "
                         f"{tuple(a_e.shape)} and {tuple(b_e.shape)}")
    with torch.no_grad():
        lora_a[idx * r:(idx + 1) * r].copy_(a_e)
        lora_b[:, idx::num_experts].copy_(b_e)


def slice_delta(a_e: torch.Tensor, b_e: torch.Tensor, scaling: float, swapped: bool) -> torch.Tensor:
    """``scaling * B_e @ A_e`` in the fused parameter's own per-expert ``(d0, d1)`` layout."""
    delta = scaling * (b_e @ a_e)  # (out, in)
    return delta if swapped else delta.T


def expert_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, idx: int, scaling: float,
                 swapped: bool) -> torch.Tensor:
    """Expert ``idx``'s weight update in the fused parameter's own ``(d0, d1)`` layout."""
    a_e, b_e = get_expert_lora(lora_a, lora_b, num_experts, idx)
    return slice_delta(a_e, b_e, scaling, swapped)


def aggregate_expert_lora(slices: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float],
                          rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of the products ``B_c @ A_c``, re-factorised at ``rank`` by truncated SVD.

    Parameters
    ----------
    slices : ``[(A_c (r, in), B_c (out, r))]`` of one expert, one pair per client
    weights : non-negative, one per client (normalised here)
    rank : the adapter's r

    Returns
    -------
    ``(A (rank, in), B (out, rank))`` with ``B @ A`` the best rank-``rank`` approximation of the
    weighted mean of ``B_c @ A_c`` (equal to it when its rank is <= ``rank``).
    """
    if not slices or len(slices) != len(weights):
        raise ValueError(f"need one weight per client slice, got {len(slices)} slices and {len(weights)} weights")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    w = w / w.sum()
    dtype = slices[0][0].dtype
    mean = sum(wc * (b.double() @ a.double()) for wc, (a, b) in zip(w, slices))  # (out, in)
    a_new, b_new = refactor(mean, rank)
    return a_new.to(dtype), b_new.to(dtype)


def refactor(product: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (rank, in), B (out, rank))`` float64 with ``B @ A`` the best rank-``rank`` approximation
    of ``product (out, in)``: truncated SVD, ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``."""
    u, s, vh = torch.linalg.svd(product.double(), full_matrices=False)
    root = s[:rank].sqrt()
    b_new = u[:, :rank] * root  # (out, rank)
    a_new = root[:, None] * vh[:rank]  # (rank, in)
    if a_new.shape[0] < rank:  # fewer singular values than rank (tiny dims): pad with zeros
        a_new = torch.cat([a_new, a_new.new_zeros(rank - a_new.shape[0], a_new.shape[1])])
        b_new = torch.cat([b_new, b_new.new_zeros(b_new.shape[0], rank - b_new.shape[1])], dim=1)
    return a_new, b_new


class ProductMean:
    """The streaming form of :func:`aggregate_expert_lora` for one expert's ``(A, B)`` pair.

    The server folds one client at a time into a running weighted mean of the products
    ``B_c @ A_c`` ``(out, in)`` (float32, float64 for float64 input), so it never holds more than
    one product per expert; :meth:`result` re-factorises it at rank ``r`` by truncated SVD (in
    float64). One contributing client keeps its own factors bit for bit (no re-factorisation).
    """

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None  # (out, in)
        self.weight = 0.0
        self.count = 0
        self._only: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, a: torch.Tensor, b: torch.Tensor, weight: float) -> None:
        """Fold in one client's ``A (r, in)``, ``B (out, r)`` with weight ``weight`` (>= 0)."""
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if weight == 0:
            return
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        prod = b.detach().to(dtype) @ a.detach().to(dtype)  # (out, in)
        self.count += 1
        self.weight += float(weight)
        if self.mean is None:
            self.mean, self.dtype = prod, a.dtype
            self._only = (a.detach().clone(), b.detach().clone())
        else:
            if prod.shape != self.mean.shape:
                raise ValueError(f"B @ A of shape {tuple(prod.shape)}, expected {tuple(self.mean.shape)}")
            self.mean.lerp_(prod, float(weight) / self.weight)
            self._only = None

    def result(self, rank: int, rest: tuple[torch.Tensor, torch.Tensor, float] | None = None):
        """``(A (rank, in), B (out, rank))`` of the weighted mean product, in the clients' dtype;
        ``rest = (A_g, B_g, w)`` adds the global pair with weight ``w`` (the clients that did not
        train the expert, counted with its global value: the "avg" ablation)."""
        if self.mean is None:
            raise ValueError("no client contributed to this expert")
        with_rest = rest is not None and rest[2] > 0
        if self._only is not None and not with_rest:
            return self._only
        mean = self.mean.double()
        if with_rest:
            share = rest[2] / (self.weight + rest[2])
            mean = mean + share * (rest[1].double() @ rest[0].double() - mean)
        a_new, b_new = refactor(mean, rank)
        return a_new.to(self.dtype), b_new.to(self.dtype)
