"""Server-side aggregation (HFedMoE Eqs. 16-21) and the plain averages the baselines need.

Shapes: C clients, E experts of one MoE layer, H hidden size, P any trailing parameter shape.
Call these once per MoE layer. Nothing here mutates an input; every result is a new tensor.

Decisions (method.md section 3):

* Experts (Eq. 17): client c counts for expert e only if ``usage[c, e] >= tau`` AND it trained e
  this round AND it has ``num_examples[c] > 0``. An expert no client qualifies for keeps its global
  value bit for bit.
* Routers (Eqs. 18-21): ``alpha`` is normalised to sum to 1 (``normalize=True``);
  ``normalize=False`` is the paper-literal unnormalised form. When no client has any expert with
  ``usage >= tau`` (``S_global`` empty), or every ``alpha(c)`` is 0 (e.g. all importances 0), the
  global router is returned unchanged (bit for bit) and ``alpha`` is all zeros, in both modes:
  a zero router (what the literal formula gives there) would erase routing, which no reading of
  the paper intends.
"""

from __future__ import annotations

import torch

from hfedmoe.core import _checks


def fedavg(tensors: torch.Tensor, num_examples: torch.Tensor) -> torch.Tensor:
    """Data-size-weighted mean over clients (FedAvg).

    Parameters
    ----------
    tensors : Tensor, shape (C, *P), floating
    num_examples : Tensor or sequence, shape (C,)
        ``|D_c|`` (>= 0, with a positive total).

    Returns
    -------
    Tensor, shape (*P), dtype of ``tensors``
        ``sum_c |D_c| * tensors[c] / sum_j |D_j|``.
    """
    tensors = _checks.float_tensor("tensors", tensors, None, "(C, ...)")
    num_clients = tensors.shape[0]
    counts = _num_examples(num_examples, num_clients, "tensors", tensors.device)  # (C,) float64
    total = counts.sum()
    if float(total) <= 0.0:
        raise ValueError(f"num_examples: expected a positive total, got {counts.tolist()}")
    weights = (counts / total).to(tensors.dtype)  # (C,)
    return torch.tensordot(weights, tensors, dims=1)  # (*P)


def expert_weights(
    usage: torch.Tensor, trained: torch.Tensor, num_examples: torch.Tensor, tau: float
) -> torch.Tensor:
    """``w_c(e)`` of Eq. 17 with the project's qualification rule.

    ``w_c(e) = |D_c| q_c(e) / sum_j |D_j| q_j(e)`` with
    ``q_c(e) = 1[usage[c, e] >= tau] * 1[trained[c, e]] * 1[|D_c| > 0]``.

    Parameters
    ----------
    usage : Tensor, shape (C, E), floating, values >= 0
        ``u_c(e)`` of Eq. 16.
    trained : Tensor, shape (C, E), bool
        Whether client c updated expert e in at least one step this round.
    num_examples : Tensor or sequence, shape (C,)
        ``|D_c|``, >= 0.
    tau : float in [0, 1]
        Usage threshold.

    Returns
    -------
    Tensor, shape (C, E), dtype of ``usage``
        Each column sums to 1 over the qualifying clients, or is all zeros if none qualifies.
    """
    usage, trained, counts = _validate_client_stats(usage, trained, num_examples)
    tau = _checks.real_number("tau", tau, 0.0, 1.0)
    return _expert_weights(usage, trained, counts, tau).to(usage.dtype)


def aggregate_experts(
    global_experts: torch.Tensor,
    client_experts: torch.Tensor,
    usage: torch.Tensor,
    trained: torch.Tensor,
    num_examples: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Sparsity-aware expert aggregation (Eq. 17).

    Parameters
    ----------
    global_experts : Tensor, shape (E, *P), floating
        The server's experts of one layer (round t).
    client_experts : Tensor, shape (C, E, *P), same dtype
        Each client's copy after local training (untrained experts may hold anything finite).
    usage, trained, num_examples, tau
        As in :func:`expert_weights`.

    Returns
    -------
    Tensor, shape (E, *P)
        ``sum_c w_c(e) * client_experts[c, e]`` for experts some client qualifies for;
        ``global_experts[e]`` bit for bit for the others.
    """
    usage, trained, counts = _validate_client_stats(usage, trained, num_examples)
    tau = _checks.real_number("tau", tau, 0.0, 1.0)
    global_experts, client_experts = _validate_stacked(
        global_experts, client_experts, usage, "global_experts", "client_experts"
    )
    weights = _expert_weights(usage, trained, counts, tau)  # (C, E) float64
    qualified = weights.sum(dim=0) > 0  # (E,)
    w = weights.to(device=client_experts.device, dtype=client_experts.dtype)  # (C, E)
    averaged = torch.einsum("ce,ce...->e...", w, client_experts)  # (E, *P)
    keep_shape = (-1,) + (1,) * (global_experts.dim() - 1)
    return torch.where(qualified.to(global_experts.device).view(keep_shape), averaged, global_experts)


def aggregate_trained(
    global_experts: torch.Tensor,
    client_experts: torch.Tensor,
    trained: torch.Tensor,
    num_examples: torch.Tensor,
) -> torch.Tensor:
    """FedAvg of each expert over the clients that trained it (baselines: FLUX-style, random).

    Experts nobody trained keep their global value bit for bit. This is :func:`aggregate_experts`
    with no usage threshold (usage 0 and ``tau = 0``, so only ``trained`` decides).

    Shapes as in :func:`aggregate_experts`; returns (E, *P).
    """
    trained = _checks.bool_tensor("trained", trained, 2, "(C, E)")
    no_threshold_usage = torch.zeros(trained.shape, dtype=torch.float64, device=trained.device)  # (C, E)
    return aggregate_experts(global_experts, client_experts, no_threshold_usage, trained, num_examples, 0.0)


def routing_consistency(usage: torch.Tensor, tau: float) -> torch.Tensor:
    """``r(c) = |S_c ∩ S_global| / |S_global|`` (Eq. 19), a metric.

    ``S_c = {e : usage[c, e] >= tau}`` (Eq. 18), ``S_global = ∪_c S_c``. Since every ``S_c`` lies
    in ``S_global``, this is ``|S_c| / |S_global|``. All zeros when ``S_global`` is empty.

    Parameters
    ----------
    usage : Tensor, shape (C, E), floating, values >= 0
    tau : float in [0, 1]

    Returns
    -------
    Tensor, shape (C,), dtype of ``usage``, values in [0, 1]
    """
    usage = _checks.float_tensor("usage", usage, 2, "(C, E)")
    _checks.check_finite_nonnegative("usage", usage)
    tau = _checks.real_number("tau", tau, 0.0, 1.0)
    selected = usage >= tau  # (C, E)  S_c
    global_mask = selected.any(dim=0)  # (E,)  S_global
    num_global = int(global_mask.sum())
    if num_global == 0:
        return usage.new_zeros(usage.shape[0])
    return (selected & global_mask).sum(dim=1).to(usage.dtype) / num_global  # (C,)


def router_weights(
    usage: torch.Tensor, importance: torch.Tensor, tau: float, *, normalize: bool = True
) -> torch.Tensor:
    """``alpha(c)`` of Eqs. 20-21.

    ``p_c(e) = usage[c, e] * importance[c, e]`` for ``e in S_c``;
    ``alpha(c) = sum_{e in S_c} p_c(e) / |S_global|``; with ``normalize=True`` divided by
    ``sum_c alpha(c)``. All zeros when ``S_global`` is empty or every ``alpha(c)`` is 0.

    Parameters
    ----------
    usage : Tensor, shape (C, E), floating, values >= 0
        ``u_c(e)`` (Eq. 16).
    importance : Tensor, shape (C, E), floating, values >= 0
        ``s^c(e)``: the client's combined importance ``s_b`` (Eq. 5) averaged over its batches.
    tau : float in [0, 1]
    normalize : bool, keyword-only
        Decision: True (weights sum to 1); False is the paper-literal unnormalised alpha.

    Returns
    -------
    Tensor, shape (C,), dtype of ``usage``
    """
    usage, importance = _validate_router_stats(usage, importance)
    tau = _checks.real_number("tau", tau, 0.0, 1.0)
    return _router_weights(usage, importance, tau, _bool("normalize", normalize)).to(usage.dtype)


def aggregate_routers(
    global_router: torch.Tensor,
    client_routers: torch.Tensor,
    usage: torch.Tensor,
    importance: torch.Tensor,
    tau: float,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparsity-aware router aggregation (Eqs. 18-21): ``G^{t+1} = sum_c alpha(c) G_c^t``.

    Parameters
    ----------
    global_router : Tensor, shape (E, H), floating
        The server's router weight of one layer (any trailing shape is accepted, e.g. (E,) for
        a router bias).
    client_routers : Tensor, shape (C, E, H), same dtype
    usage, importance, tau, normalize
        As in :func:`router_weights`.

    Returns
    -------
    new_router : Tensor, shape (E, H)
        ``global_router`` unchanged (a bit-for-bit copy) when every ``alpha(c)`` is 0, in
        particular when no client has any expert with ``usage >= tau``.
    alpha : Tensor, shape (C,), dtype of ``global_router``
        The weights used (all zeros in the fallback). For ``r(c)`` see :func:`routing_consistency`.
    """
    usage, importance = _validate_router_stats(usage, importance)
    tau = _checks.real_number("tau", tau, 0.0, 1.0)
    normalize = _bool("normalize", normalize)
    global_router, client_routers = _validate_stacked(
        global_router, client_routers, usage, "global_router", "client_routers"
    )
    alpha = _router_weights(usage, importance, tau, normalize)  # (C,) float64
    alpha = alpha.to(device=client_routers.device, dtype=client_routers.dtype)  # (C,)
    if not bool((alpha != 0).any()):
        return global_router.clone(), torch.zeros_like(alpha)
    return torch.tensordot(alpha, client_routers, dims=1), alpha  # (E, H), (C,)


def aggregate_routers_by_data(
    global_router: torch.Tensor, client_routers: torch.Tensor, num_examples: torch.Tensor
) -> torch.Tensor:
    """Plain FedAvg of the routers (the "uniform-gate" ablation and FedAvg-style baselines).

    ``global_router`` (E, H) only fixes the expected shape; returns (E, H).
    """
    global_router = _checks.float_tensor("global_router", global_router, None, "(E, ...)")
    client_routers = _checks.float_tensor("client_routers", client_routers, None, "(C, E, ...)")
    expected = "(C, " + _checks.shape_str(global_router.shape)[1:]
    if tuple(client_routers.shape[1:]) != tuple(global_router.shape) or client_routers.dim() < 2:
        raise ValueError(
            f"client_routers: expected shape {expected} matching global_router, "
            f"got {_checks.shape_str(client_routers.shape)}"
        )
    _check_same_dtype("client_routers", client_routers, "global_router", global_router)
    return fedavg(client_routers, num_examples)


# --------------------------------------------------------------------------- internals


def _expert_weights(usage: torch.Tensor, trained: torch.Tensor, counts: torch.Tensor, tau: float) -> torch.Tensor:
    """(C, E) float64 weights of Eq. 17; columns sum to 1 or are all zeros."""
    qualifies = (usage >= tau) & trained & (counts > 0).unsqueeze(1)  # (C, E)
    mass = counts.unsqueeze(1) * qualifies.to(torch.float64)  # (C, E)
    totals = mass.sum(dim=0)  # (E,)
    return mass / torch.where(totals > 0, totals, torch.ones_like(totals))  # (C, E)


def _router_weights(usage: torch.Tensor, importance: torch.Tensor, tau: float, normalize: bool) -> torch.Tensor:
    """(C,) float64 alpha of Eqs. 18-21 (with the all-zero fallback)."""
    usage64 = usage.to(torch.float64)  # (C, E)
    selected = usage >= tau  # (C, E)  S_c  (Eq. 18)
    num_global = int(selected.any(dim=0).sum())  # |S_global|
    if num_global == 0:
        return torch.zeros(usage.shape[0], dtype=torch.float64, device=usage.device)
    p = usage64 * importance.to(device=usage.device, dtype=torch.float64)  # (C, E)  p_c(e), Eq. 20
    alpha = torch.where(selected, p, torch.zeros_like(p)).sum(dim=1) / num_global  # (C,)  Eq. 21
    total = alpha.sum()
    if float(total) <= 0.0:
        return torch.zeros_like(alpha)
    return alpha / total if normalize else alpha


def _num_examples(value: object, num_clients: int, against: str, device: torch.device) -> torch.Tensor:
    counts = _checks.as_tensor("num_examples", value)
    if counts.dim() != 1 or counts.dtype == torch.bool or counts.is_complex():
        raise ValueError(f"num_examples: expected a (C,) numeric tensor, got shape {_checks.shape_str(counts.shape)} "
                         f"dtype {counts.dtype}")
    _checks.check_dim("num_examples", counts, 0, num_clients, "(C,)", f"C={num_clients} matching {against}")
    counts = counts.to(device=device, dtype=torch.float64)
    _checks.check_finite_nonnegative("num_examples", counts)
    return counts


def _validate_client_stats(
    usage: torch.Tensor, trained: torch.Tensor, num_examples: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    usage = _checks.float_tensor("usage", usage, 2, "(C, E)")
    _checks.check_finite_nonnegative("usage", usage)
    num_clients, num_experts = usage.shape
    trained = _checks.bool_tensor("trained", trained, 2, "(C, E)")
    if tuple(trained.shape) != (num_clients, num_experts):
        raise ValueError(
            f"trained: expected shape (C, E) with C={num_clients}, E={num_experts} matching usage, "
            f"got {_checks.shape_str(trained.shape)}"
        )
    counts = _num_examples(num_examples, num_clients, "usage", usage.device)
    return usage, trained.to(usage.device), counts


def _validate_router_stats(usage: torch.Tensor, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    usage = _checks.float_tensor("usage", usage, 2, "(C, E)")
    _checks.check_finite_nonnegative("usage", usage)
    importance = _checks.float_tensor("importance", importance, 2, "(C, E)")
    if importance.shape != usage.shape:
        raise ValueError(
            f"importance: expected shape (C, E) with C={usage.shape[0]}, E={usage.shape[1]} matching usage, "
            f"got {_checks.shape_str(importance.shape)}"
        )
    _checks.check_finite_nonnegative("importance", importance)
    return usage, importance


def _validate_stacked(
    global_t: object, client_t: object, usage: torch.Tensor, global_name: str, client_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """global (E, *P) and client (C, E, *P) consistent with usage (C, E)."""
    num_clients, num_experts = usage.shape
    global_t = _checks.float_tensor(global_name, global_t, None, "(E, ...)")
    _checks.check_dim(global_name, global_t, 0, num_experts, "(E, ...)", f"E={num_experts} matching usage")
    client_t = _checks.float_tensor(client_name, client_t, None, "(C, E, ...)")
    if client_t.dim() != global_t.dim() + 1:
        raise ValueError(
            f"{client_name}: expected shape (C, E, ...) with {global_t.dim() + 1} dimensions "
            f"(one more than {global_name} {_checks.shape_str(global_t.shape)}), "
            f"got {_checks.shape_str(client_t.shape)}"
        )
    _checks.check_dim(client_name, client_t, 0, num_clients, "(C, E, ...)", f"C={num_clients} matching usage")
    if tuple(client_t.shape[1:]) != tuple(global_t.shape):
        raise ValueError(
            f"{client_name}: expected shape (C, E, ...) with trailing shape {_checks.shape_str(global_t.shape)} "
            f"matching {global_name}, got {_checks.shape_str(client_t.shape)}"
        )
    _check_same_dtype(client_name, client_t, global_name, global_t)
    return global_t, client_t


def _check_same_dtype(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.dtype != ref.dtype:
        raise ValueError(f"{name}: expected dtype {ref.dtype} matching {ref_name}, got {x.dtype}")


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return value
