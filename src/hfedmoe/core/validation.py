"""Checks on one client update before it reaches aggregation (pure: tensors in, a reason out).

A client is not trusted: what it uploads must look like what the server asked for. Every engine
calls :func:`check_update` on each update as it arrives (streaming aggregation never holds a whole
round), then :class:`NormBound` for the size of the change. A non-empty reason rejects the update;
the round is aggregated from the others.

Norm rule (decided per update, no view of the current round needed): the update's distance to
the global model, ``||u - g||_2`` over every tensor it carries, must not exceed
``norm_factor x median`` (``torch.median``: the lower middle value for an even count) of the distances of the updates accepted in the previous ``window``
rounds. With AdamW, every round (history or not) also bounds the change by what the optimizer can do
from these weights (:mod:`hfedmoe.core.step_bound`): ``|u - g|_inf`` and ``|u - g|_2`` at most the
honest maximum for the round's local steps and learning rate; that bound replaces the first-round
rule and caps the median rule. With SGD (no step bound) and no history, the distance must not
exceed ``first_round_factor x ||g||_2``. With client-level DP the
server knows the noise it must tolerate and raises the bound to at least
``clip (1 + sigma (sqrt(d) + 4))`` (the clipped change plus a 4-sigma chi tail of d-dim noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from hfedmoe.core.step_bound import StepBounds


class UpdateLike(Protocol):
    """What a client uploads (``hfedmoe.client.ClientUpdate``): the fields checked here."""

    num_examples: int
    experts: dict[tuple[int, int], dict[str, torch.Tensor]]
    routers: dict[int, dict[str, torch.Tensor]]
    dense: dict[str, torch.Tensor]
    usage: torch.Tensor
    importance: torch.Tensor
    trained: torch.Tensor
    selected_counts: torch.Tensor
    nonce: str  # the server's nonce of this round for this client, echoed


@dataclass
class Reference:
    """The global tensors an update is compared with (clones taken before the clients train)."""

    experts: list[dict[str, torch.Tensor]]  # per layer {name: (E, *P)}
    routers: list[dict[str, torch.Tensor]]  # per layer {name: tensor}
    dense: dict[str, torch.Tensor]  # trainable dense parameters by name

    @property
    def num_layers(self) -> int:
        return len(self.experts)

    @property
    def num_experts(self) -> int:
        first = next(iter(self.experts[0].values()))
        return int(first.shape[0])


@dataclass
class Allowance:
    """What the server allowed one client this round."""

    num_examples: int  # examples the server assigned (the update may claim at most this many)
    experts: torch.Tensor  # (L, E) bool: experts the plan lets it train
    max_selections: int | None  # bound on expert selections (budget x local steps); None = no bound
    per_layer: bool  # the bound applies to each layer (budget_scope "layer") or to the sum over layers
    routers: bool  # whether it may upload routers
    dense: frozenset[str]  # dense parameter names it may upload
    steps: int | None = None  # local steps asked for: a bound on each selected_counts entry
    nonce: str | None = None  # what the update must echo (None: not checked)


def _is_float_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _check_tensor(what: str, t: Any, ref: torch.Tensor) -> str | None:
    if not isinstance(t, torch.Tensor):
        return f"{what}: expected a tensor, got {type(t).__name__}"
    if t.dtype != ref.dtype:
        return f"{what}: dtype {t.dtype}, expected {ref.dtype}"
    if tuple(t.shape) != tuple(ref.shape):
        return f"{what}: shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
    if not bool(torch.isfinite(t).all()):
        return f"{what}: non-finite values (NaN or inf)"
    return None


def _check_named(what: str, got: Any, ref: Mapping[str, torch.Tensor], index: int | None = None) -> str | None:
    if not isinstance(got, dict) or set(got) != set(ref):
        names = sorted(got) if isinstance(got, dict) else type(got).__name__
        return f"{what}: tensors {names}, expected {sorted(ref)}"
    for name, g in ref.items():
        r = g[index] if index is not None else g
        bad = _check_tensor(f"{what} {name}", got[name], r)
        if bad:
            return bad
    return None


def _check_stats(upd: UpdateLike, L: int, E: int) -> str | None:
    for name in ("usage", "importance"):
        t = getattr(upd, name, None)
        if not _is_float_tensor(t) or tuple(t.shape) != (L, E):
            return f"{name}: expected a float tensor of shape ({L}, {E}), got {_describe(t)}"
        if not bool(torch.isfinite(t).all()):
            return f"{name}: non-finite values (NaN or inf)"
    if not bool(((upd.usage >= 0) & (upd.usage <= 1 + 1e-4)).all()):
        return "usage: values outside [0, 1]"
    if not bool(((upd.importance >= -1e-4) & (upd.importance <= 1 + 1e-4)).all()):
        # s_b(e) = lam mean + (1 - lam) max of router probabilities (core/importance.py)
        return f"importance: values outside [0, 1] (max {float(upd.importance.abs().max()):.4g})"
    t = upd.trained
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or tuple(t.shape) != (L, E):
        return f"trained: expected a bool tensor of shape ({L}, {E}), got {_describe(t)}"
    s = upd.selected_counts
    if not isinstance(s, torch.Tensor) or s.dtype != torch.long or tuple(s.shape) != (L, E):
        return f"selected_counts: expected an int64 tensor of shape ({L}, {E}), got {_describe(s)}"
    if bool((s < 0).any()):
        return "selected_counts: negative values"
    return None


def _check_counts(upd: UpdateLike, allow: Allowance) -> str | None:
    if allow.steps is not None and bool((upd.selected_counts > allow.steps).any()):
        worst = int(upd.selected_counts.max())
        return f"selected_counts: {worst} batches for one expert, the client ran {allow.steps} local steps"
    return None


def _describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} {tuple(t.shape)}"
    return type(t).__name__


def check_update(upd: UpdateLike, ref: Reference, allow: Allowance) -> str | None:
    """The first reason ``upd`` must be rejected, or None when it is well formed and within what
    the client was allowed. Does not check the norm (see :class:`NormBound`)."""
    L, E = ref.num_layers, ref.num_experts
    if allow.nonce is not None and getattr(upd, "nonce", None) != allow.nonce:
        return "nonce: not this round's (a stale or replayed update)"
    n = upd.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= allow.num_examples:
        return f"num_examples: {n!r} claimed, the server assigned {allow.num_examples}"
    bad = _check_stats(upd, L, E) or _check_counts(upd, allow)
    if bad:
        return bad
    if not isinstance(upd.experts, dict):
        return f"experts: expected a dict, got {type(upd.experts).__name__}"
    for key in upd.experts:
        ok = (isinstance(key, tuple) and len(key) == 2
              and all(isinstance(i, int) and not isinstance(i, bool) for i in key))
        if not ok or not (0 <= key[0] < L and 0 <= key[1] < E):
            return f"experts: id {key!r} out of range (layers 0..{L - 1}, experts 0..{E - 1})"
    sent = torch.zeros(L, E, dtype=torch.bool)
    for (layer, e) in upd.experts:
        sent[layer, e] = True
    if not torch.equal(sent, upd.trained):
        claimed = (upd.trained & ~sent).nonzero().tolist()
        unsent = (sent & ~upd.trained).nonzero().tolist()
        return f"trained: claims experts {claimed} without uploading them" if claimed else (
            f"experts: uploads {unsent} not claimed as trained")
    if not torch.equal(upd.trained, upd.selected_counts > 0):
        return "selected_counts: disagree with the trained experts"
    outside = (upd.trained & ~allow.experts).nonzero().tolist()
    if outside:
        return f"trained: experts {outside} (layer, expert) were not allowed by the plan"
    if allow.max_selections is not None:
        per = upd.selected_counts.sum(dim=1)  # (L,)
        worst = int(per.max()) if allow.per_layer else int(per.sum())
        if worst > allow.max_selections:
            scope = "in a layer" if allow.per_layer else "in the model"
            return f"selected_counts: {worst} expert selections {scope}, the budget allows {allow.max_selections}"
    for (layer, e), tensors in upd.experts.items():
        bad = _check_named(f"expert ({layer}, {e})", tensors, ref.experts[layer], index=e)
        if bad:
            return bad
    if not isinstance(upd.routers, dict):
        return f"routers: expected a dict, got {type(upd.routers).__name__}"
    if upd.routers and not allow.routers:
        return "routers: uploaded but not trained this round"
    for layer, tensors in upd.routers.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < L:
            return f"routers: layer {layer!r} out of range 0..{L - 1}"
        bad = _check_named(f"router {layer}", tensors, ref.routers[layer])
        if bad:
            return bad
    if not isinstance(upd.dense, dict):
        return f"dense: expected a dict, got {type(upd.dense).__name__}"
    extra = sorted(set(upd.dense) - allow.dense)
    if extra:
        return f"dense: tensors {extra[:3]} were not trainable this round"
    for name, t in upd.dense.items():
        bad = _check_tensor(f"dense {name}", t, ref.dense[name])
        if bad:
            return bad
    return None


class Distance(NamedTuple):
    """How far a (well-formed) update is from the global tensors it carries, in float64."""

    l2: float  # ||u - g||_2
    global_norm: float  # ||g||_2
    dims: int  # coordinates
    max_abs: float = 0.0  # max |u - g|
    global_max_abs: float = 0.0  # max |g|
    dtype_eps: float = 0.0  # largest machine epsilon of the tensors' dtypes (rounding per step)


def update_distance(upd: UpdateLike, ref: Reference) -> Distance:
    """The :class:`Distance` over every tensor the (well-formed) update carries."""
    dist2 = glob2 = max_abs = gmax = eps = 0.0
    count = 0

    def add(t: torch.Tensor, g: torch.Tensor) -> None:
        nonlocal dist2, glob2, count, max_abs, gmax, eps
        diff = t.double() - g.double()
        dist2 += float(diff.pow(2).sum())
        glob2 += float(g.double().pow(2).sum())
        count += t.numel()
        if t.numel():
            max_abs = max(max_abs, float(diff.abs().max()))
            gmax = max(gmax, float(g.abs().max()))
        eps = max(eps, float(torch.finfo(g.dtype).eps))

    for (layer, e), tensors in upd.experts.items():
        for name, t in tensors.items():
            add(t, ref.experts[layer][name][e])
    for layer, tensors in upd.routers.items():
        for name, t in tensors.items():
            add(t, ref.routers[layer][name])
    for name, t in upd.dense.items():
        add(t, ref.dense[name])
    return Distance(math.sqrt(dist2), math.sqrt(glob2), count, max_abs, gmax, eps)


class NormBound:
    """The robust norm rule (module docstring), decided per update as it arrives.

    ``limit`` uses only earlier rounds; ``accept`` records an accepted distance for the rounds
    after this one; ``end_round`` closes the round. ``state_dict`` goes into checkpoints so a
    resumed run decides exactly as an uninterrupted one.
    """

    def __init__(self, factor: float, window: int, first_round_factor: float,
                 dp_clip: float | None = None, dp_sigma: float = 0.0) -> None:
        self.factor = factor
        self.window = window
        self.first_round_factor = first_round_factor
        self.dp_clip = dp_clip
        self.dp_sigma = dp_sigma
        self.history: list[list[float]] = []  # accepted distances of the previous rounds
        self._current: list[float] = []

    def _median_bound(self) -> float | None:
        past = [x for r in self.history[-self.window:] for x in r]
        return self.factor * float(torch.tensor(past, dtype=torch.float64).median()) if past else None

    def limit(self, global_norm: float, dims: int, step: StepBounds | None = None) -> float:
        """The L2 bound: the optimizer's (``step``, every round) or, without one, the first-round
        rule; capped by the median rule when there is history; raised for DP noise."""
        median = self._median_bound()
        bound = step.l2 if step is not None else self.first_round_factor * global_norm
        if median is not None:
            bound = min(bound, median) if step is not None else median
        if self.dp_clip is not None:
            bound = max(bound, self.dp_clip * (1.0 + self.dp_sigma * (math.sqrt(dims) + 4.0)))
        return bound

    def check(self, distance: float, global_norm: float, dims: int, step: StepBounds | None = None,
              max_abs: float = 0.0) -> str | None:
        """Why an update ``distance`` away (largest coordinate change ``max_abs``) is rejected."""
        if step is not None and self.dp_clip is None and not max_abs <= step.max_abs:
            return (f"update changes a weight by {max_abs:.4g}, more than the optimizer can in the round's "
                    f"local steps ({step.max_abs:.4g})")
        lim = self.limit(global_norm, dims, step)
        if not distance <= lim:
            median = self._median_bound()
            if step is not None and (median is None or step.l2 <= median):
                rule = "the optimizer's bound for the round's local steps"
            elif median is not None:
                rule = "x median of previous rounds"
            else:
                rule = "x global norm (first round)"
            return f"update norm {distance:.4g} exceeds the bound {lim:.4g} ({rule})"
        return None

    def accept(self, distance: float) -> None:
        self._current.append(float(distance))

    def end_round(self) -> None:
        self.history.append(self._current)
        self.history = self.history[-self.window:]
        self._current = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [[float(x) for x in r] for r in state.get("history", [])]
        self._current = []


def allowed_experts(num_layers: int, num_experts: int,
                    static_subsets: Sequence[Sequence[int] | None] | None,
                    restrict: Sequence[Sequence[int] | None] | None) -> torch.Tensor:
    """(L, E) bool: the experts a plan lets a client train (its static subsets within its routing
    restriction; a plan choosing per batch may train any expert it is routed to)."""
    mask = torch.ones(num_layers, num_experts, dtype=torch.bool)
    for subsets in (static_subsets, restrict):
        if subsets is None:
            continue
        for layer, sub in enumerate(subsets):
            if sub is None:
                continue
            row = torch.zeros(num_experts, dtype=torch.bool)
            row[torch.as_tensor(list(sub), dtype=torch.long)] = True
            mask[layer] &= row
    return mask
