"""Streaming forms of the aggregation equations: fold one client at a time into running sums.

The stacked functions of :mod:`hfedmoe.core.aggregation` take every client at once as
``(C, E, *P)`` tensors, so a server using them holds every update of the round. The
accumulators here hold one running sum per tensor instead, so the server's memory does not grow
with the number of clients, and give the same results (up to float rounding; the sums are kept
as running means, see below):

* FedAvg: ``sum_c n_c x_c / sum_c n_c``: both sums are known client by client.
* Eq. 17 (experts): ``w_c(e) = n_c q_c(e) / sum_j n_j q_j(e)``: the normaliser is a per-expert
  sum of per-client terms, so ``sum_c n_c q_c(e) x_c(e)`` and ``sum_c n_c q_c(e)`` are kept per
  expert and divided at the end.
* Eqs. 18-21 (routers): ``alpha(c) = a_c / |S_global|`` with ``a_c = sum_{e in S_c} p_c(e)``
  known per client. Normalised, ``|S_global|`` cancels: ``sum_c a_c G_c / sum_c a_c``.
  Paper-literal, it is needed only at the end: ``S_global`` is kept as the union of the ``S_c``
  seen so far, and ``sum_c a_c G_c / |S_global|`` is formed when the round is finished.

The sums are kept as running weighted means (``mean += w_c / W_c (x_c - mean)``, one fused
``lerp`` per tensor), so each update is read once, without float64 copies, and a single client is
reproduced bit for bit. Accumulators never mutate their inputs; results are new tensors in the
dtype of the reference (global) tensors. Shapes: E experts of one layer, P any trailing parameter shape.
"""

from __future__ import annotations

import torch

from hfedmoe.core import _checks


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Running means are kept in float32 (float64 for float64 inputs): bf16 rounding happens once."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fold(mean: torch.Tensor, x: torch.Tensor, share: float | torch.Tensor) -> None:
    """``mean += share * (x - mean)`` in place, one fused pass (``torch.lerp``); ``share = w_c / W``
    with ``W`` the weight so far, so the first client (share 1) is copied bit for bit."""
    x = x.detach()
    if x.dtype != mean.dtype:
        x = x.to(mean.dtype)
    mean.lerp_(x, share)


class WeightedMean:
    """``sum_c w_c x_c / sum_c w_c`` per tensor name, one client at a time (FedAvg).

    Kept as a running mean (``mean += w_c / W_c * (x_c - mean)``, ``W_c`` the weight so far): one
    pass over each update, no float64 copies, and one client alone is reproduced bit for bit.
    Each name has its own weight total and count, so names some clients do not send (a dense
    tensor only some clients trained) are averaged over the clients that sent them.
    """

    def __init__(self) -> None:
        self._means: dict[str, torch.Tensor] = {}  # name -> (*P)
        self._weights: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, tensors: dict[str, torch.Tensor], weight: float) -> None:
        """Fold in one client's ``tensors`` with weight ``weight`` (>= 0, e.g. ``|D_c|``)."""
        weight = _checks.real_number("weight", weight, 0.0)
        for name, x in tensors.items():
            if name not in self._means:
                self._means[name] = torch.zeros(x.shape, dtype=acc_dtype(x.dtype), device=x.device)
                self._weights[name], self._counts[name] = 0.0, 0
            elif tuple(self._means[name].shape) != tuple(x.shape):
                raise ValueError(f"{name}: expected shape {_checks.shape_str(self._means[name].shape)} "
                                 f"as in earlier clients, got {_checks.shape_str(x.shape)}")
            self._counts[name] += 1
            if weight > 0.0:
                self._weights[name] += weight
                _fold(self._means[name], x, weight / self._weights[name])

    def names(self) -> list[str]:
        return sorted(self._means)

    def count(self, name: str) -> int:
        """Clients that sent ``name``."""
        return self._counts.get(name, 0)

    def weight(self, name: str) -> float:
        return self._weights.get(name, 0.0)

    def mean(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The weighted mean of ``name`` in ``dtype``; a ValueError when its weights sum to 0."""
        total = self._weights.get(name, 0.0)
        if total <= 0.0:
            raise ValueError(f"num_examples: expected a positive total for {name}, got {total}")
        return self._means[name].to(dtype)

    def scaled(self, name: str, factor: float, dtype: torch.dtype) -> torch.Tensor:
        """``factor x`` the weighted mean (the weighted sum divided by something else than ``W``)."""
        return (self._means[name] * factor).to(dtype)


class PerExpertMean:
    """Per-expert (per-row) weighted means of one layer: Eq. 17 in one pass.

    Row ``e`` holds the running mean of ``x_c(e)`` weighted by the per-client masses ``m_c(e)``
    (``|D_c| q_c(e)`` for Eq. 17) and ``mass[e] = sum_c m_c(e)``. Every add must carry the same
    tensor names.
    """

    def __init__(self, num_experts: int) -> None:
        self.num_experts = _checks.positive_int("num_experts", num_experts)
        self._means: dict[str, torch.Tensor] = {}  # name -> (E, *P)
        self._rows: dict[str, tuple[torch.Tensor, ...]] = {}  # name -> E views (*P) of _means[name]
        self._names: tuple[str, ...] | None = None
        self._order: tuple[str, ...] | None = None  # the names in the order last seen (fast check)
        self._mass = [0.0] * self.num_experts

    @property
    def mass(self) -> torch.Tensor:
        """(E,) float64: the total mass each row received."""
        return torch.tensor(self._mass, dtype=torch.float64)

    def _check_names(self, tensors: dict[str, torch.Tensor]) -> None:
        order = tuple(tensors)
        if order == self._order:  # the common case: same names in the same order, no sort
            return
        names = tuple(sorted(order))
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise ValueError(f"tensors: expected names {list(self._names)} as in earlier clients, got {list(names)}")
        self._order = order  # only once accepted: a refused order must be refused again

    def _mean(self, name: str, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self._means:
            self._means[name] = torch.zeros((self.num_experts, *shape), dtype=acc_dtype(x.dtype), device=x.device)
            self._rows[name] = self._means[name].unbind(0)
        elif self._means[name].shape[1:] != shape:
            raise ValueError(f"{name}: expected shape {_checks.shape_str(self._means[name].shape[1:])} per expert "
                             f"as in earlier clients, got {_checks.shape_str(shape)}")
        return self._means[name]

    def add_expert(self, expert_idx: int, tensors: dict[str, torch.Tensor], mass: float) -> None:
        """Fold in one client's copy of expert ``expert_idx`` (``{name: (*P)}``) with ``mass`` >= 0."""
        if not 0 <= expert_idx < self.num_experts:
            raise ValueError(f"expert_idx: expected an integer in [0, {self.num_experts}), got {expert_idx}")
        if not mass > 0.0:  # also refuses NaN
            if mass == 0.0:
                return
            raise ValueError(f"mass: expected a number >= 0, got {mass!r}")
        self._check_names(tensors)
        self._mass[expert_idx] += mass
        share = mass / self._mass[expert_idx]
        for name, x in tensors.items():
            _fold(self._mean(name, x, tuple(x.shape))[expert_idx], x, share)

    def plan_experts(self, items: list[tuple[int, dict[str, torch.Tensor]]], mass: float,
                     targets: list[torch.Tensor], sources: list[torch.Tensor], shares: list[float]) -> None:
        """Like :meth:`add_expert` for several experts of one client, but only append the
        (running mean, update, share) triples to the lists, so the caller folds a whole update
        in one :func:`fold_all` call (one kernel launch instead of one per tensor)."""
        if not mass > 0.0:
            if mass == 0.0:
                return
            raise ValueError(f"mass: expected a number >= 0, got {mass!r}")
        for expert_idx, tensors in items:
            if not 0 <= expert_idx < self.num_experts:
                raise ValueError(f"expert_idx: expected an integer in [0, {self.num_experts}), got {expert_idx}")
            self._check_names(tensors)
            self._mass[expert_idx] += mass
            share = mass / self._mass[expert_idx]
            for name, x in tensors.items():
                acc = self._mean(name, x, x.shape)
                targets.append(self._rows[name][expert_idx])
                sources.append(x.detach() if x.dtype == acc.dtype else x.detach().to(acc.dtype))
                shares.append(share)

    def add_rows(self, tensors: dict[str, torch.Tensor], masses: torch.Tensor) -> None:
        """Fold in one client's ``{name: (E, *P)}`` with a mass per row ``masses`` (E,)."""
        masses = _checks.float_tensor("masses", masses, 1, "(E,)")
        _checks.check_dim("masses", masses, 0, self.num_experts, "(E,)", f"E={self.num_experts}")
        _checks.check_finite_nonnegative("masses", masses)
        self._check_names(tensors)
        m = masses.detach().cpu().to(torch.float64)  # (E,)
        totals = self.mass + m  # (E,)
        shares = torch.where(totals > 0, m / torch.where(totals > 0, totals, torch.ones_like(totals)),
                             torch.zeros_like(totals))  # (E,)
        self._mass = totals.tolist()
        for name, x in tensors.items():
            _checks.check_dim(name, x, 0, self.num_experts, "(E, ...)", f"E={self.num_experts}")
            acc = self._mean(name, x, tuple(x.shape[1:]))
            w = shares.to(device=acc.device, dtype=acc.dtype).view((-1,) + (1,) * (x.dim() - 1))  # (E, 1...)
            _fold(acc, x, w.expand_as(acc))

    def mean(self, global_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per row: the weighted mean where some client had mass, ``global_tensors`` bit for bit elsewhere."""
        qualified = self.mass > 0  # (E,)
        every = bool(qualified.all())
        out = {}
        for name, g in global_tensors.items():
            if name not in self._means:
                out[name] = g.clone()
                continue
            shape = (-1,) + (1,) * (g.dim() - 1)
            averaged = self._means[name].to(device=g.device, dtype=g.dtype)  # (E, *P)
            out[name] = averaged if every else torch.where(qualified.to(g.device).view(shape), averaged, g)
        return out

    def qualified_all(self) -> bool:
        """Whether every row received some mass (then :meth:`mean` needs no global values)."""
        return all(m > 0 for m in self._mass)

    def shapes(self) -> dict[str, torch.Tensor]:
        """The running means by name (E, *P) (read-only use: shapes and dtypes)."""
        return self._means

    def mean_with_rest(self, global_tensors: dict[str, torch.Tensor], total_mass: float) -> dict[str, torch.Tensor]:
        """``(sum_c m_c x_c + (total_mass - mass) * global) / total_mass`` per row: clients that did
        not send a row count with the global value (the "avg" ablation: plain FedAvg over everyone)."""
        total_mass = _checks.real_number("total_mass", total_mass, 0.0)
        if total_mass <= 0.0:
            raise ValueError(f"num_examples: expected a positive total, got {total_mass}")
        out = {}
        for name, g in global_tensors.items():
            if name not in self._means:
                out[name] = g.clone()
                continue
            shape = (-1,) + (1,) * (g.dim() - 1)
            acc = self._means[name]
            share = (self.mass / total_mass).clamp(max=1.0).to(device=acc.device, dtype=acc.dtype).view(shape)
            out[name] = torch.lerp(g.to(acc.dtype), acc, share.expand_as(acc)).to(g.dtype)
        return out


def fold_all(targets: list[torch.Tensor], sources: list[torch.Tensor], shares: list[float]) -> None:
    """``targets[i] += shares[i] * (sources[i] - targets[i])`` for every i, in one fused call."""
    if not targets:
        return
    foreach = getattr(torch, "_foreach_lerp_", None)
    if foreach is not None and all(t.device == targets[0].device for t in targets):
        try:
            foreach(targets, sources, shares)
            return
        except (RuntimeError, TypeError):  # an older torch without the scalar-list overload
            pass
    for t, s, w in zip(targets, sources, shares, strict=True):
        t.lerp_(s, w)


class RouterMean:
    """Eqs. 18-21 for one layer in one pass: ``G = sum_c alpha(c) G_c``.

    ``add`` takes one client's usage ``u_c`` (E,), importance ``s^c`` (E,) and router tensors; it
    forms ``a_c = sum_{e in S_c} u_c(e) s^c(e)`` (``S_c = {e : u_c(e) >= tau}``), adds
    ``a_c G_c`` and ``a_c`` to running sums and ``S_c`` to the union ``S_global``.
    ``result(normalize=True)`` divides by ``sum_c a_c`` (``|S_global|`` cancels); ``False`` (the
    paper-literal form) divides by ``|S_global|``, known only now. When ``S_global`` is empty or
    every ``a_c`` is 0 the global router is returned unchanged (as :func:`aggregate_routers`).
    """

    def __init__(self, num_experts: int, tau: float) -> None:
        self.num_experts = _checks.positive_int("num_experts", num_experts)
        self.tau = _checks.real_number("tau", tau, 0.0, 1.0)
        self.union = torch.zeros(self.num_experts, dtype=torch.bool)  # (E,) S_global so far
        self.alpha_sum = 0.0  # sum_c a_c
        self.num_clients = 0
        self.selected_sum = 0  # sum_c |S_c|  (for the consistency metric, Eq. 19)
        self._sums = WeightedMean()

    def add(self, usage: torch.Tensor, importance: torch.Tensor, tensors: dict[str, torch.Tensor]) -> float:
        """Fold in one client; returns its unnormalised ``a_c``."""
        usage = _checks.float_tensor("usage", usage, 1, "(E,)")
        _checks.check_dim("usage", usage, 0, self.num_experts, "(E,)", f"E={self.num_experts}")
        _checks.check_finite_nonnegative("usage", usage)
        importance = _checks.float_tensor("importance", importance, 1, "(E,)")
        _checks.check_dim("importance", importance, 0, self.num_experts, "(E,)", f"E={self.num_experts}")
        _checks.check_finite_nonnegative("importance", importance)
        selected = (usage >= self.tau).cpu()  # (E,)  S_c, Eq. 18
        p = usage.detach().cpu().double() * importance.detach().cpu().double()  # (E,) Eq. 20
        a = float(torch.where(selected, p, torch.zeros_like(p)).sum())  # Eq. 21 numerator
        self.union |= selected
        self.selected_sum += int(selected.sum())
        self.num_clients += 1
        self.alpha_sum += a
        self._sums.add(tensors, a)
        return a

    @property
    def num_global(self) -> int:
        """``|S_global|`` over the clients added so far."""
        return int(self.union.sum())

    def result(self, global_tensors: dict[str, torch.Tensor], *, normalize: bool = True) -> dict[str, torch.Tensor]:
        if self.num_global == 0 or self.alpha_sum <= 0.0:
            return {name: g.clone() for name, g in global_tensors.items()}
        divisor = self.alpha_sum if normalize else float(self.num_global)
        out = {}
        for name, g in global_tensors.items():
            if self._sums.count(name) != self.num_clients:
                raise ValueError(f"{name}: expected every client to send it, got {self._sums.count(name)} "
                                 f"of {self.num_clients}")
            # the running mean is sum_c a_c G_c / sum_c a_c: rescale for the literal divisor
            out[name] = self._sums.scaled(name, self.alpha_sum / divisor, g.dtype).to(g.device)
        return out

    def consistency(self) -> float:
        """Mean over clients of ``r(c) = |S_c| / |S_global|`` (Eq. 19); 0 when ``S_global`` is empty."""
        if self.num_clients == 0 or self.num_global == 0:
            return 0.0
        return self.selected_sum / self.num_clients / self.num_global
