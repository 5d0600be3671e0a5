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


def get_expert_lora(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, idx: int):
    """``(A_e (r, in), B_e (out, r))`` of expert ``idx``: clones."""
    r = _check(lora_a, lora_b, num_experts)
    return lora_a[idx * r:(idx + 1) * r].detach().clone(), lora_b[:, idx::num_experts].detach().clone()


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


def expert_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, num_experts: int, idx: int, scaling: float,
                 swapped: bool) -> torch.Tensor:
    """Expert ``idx``'s weight update in the fused parameter's own ``(d0, d1)`` layout."""
    a_e, b_e = get_expert_lora(lora_a, lora_b, num_experts, idx)
    delta = scaling * (b_e @ a_e)  # (out, in)
    return delta if swapped else delta.T


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
    u, s, vh = torch.linalg.svd(mean, full_matrices=False)
    root = s[:rank].sqrt()
    b_new = u[:, :rank] * root  # (out, rank)
    a_new = root[:, None] * vh[:rank]  # (rank, in)
    if a_new.shape[0] < rank:  # fewer singular values than rank (tiny dims): pad with zeros
        a_new = torch.cat([a_new, a_new.new_zeros(rank - a_new.shape[0], a_new.shape[1])])
        b_new = torch.cat([b_new, b_new.new_zeros(b_new.shape[0], rank - b_new.shape[1])], dim=1)
    return a_new.to(dtype), b_new.to(dtype)
