"""Static-shape dispatch of fused experts inside ``train_only`` (``train.dispatch = "static"``):
no device->host read in a layer's forward, ONE per training step for every layer together.

Per layer and forward (``b``: the layer's slot count, a host int -- the budget):

- **slots** ``(b,)``: the chosen experts in increasing order, filled up to exactly ``b`` with
  unchosen ones (a stable sort of the ``(E,)`` choice: a static shape, no read);
- **slot leaves**: the ``b`` slots' tensors gathered into fresh leaves ``(b, ...)``, the only
  expert tensors autograd gives a gradient (the budget's memory, never an ``E``-sized gradient);
- the (token, slot) pairs routed to a chosen expert, sorted by slot, go through one
  ``grouped_mm`` per projection with device-side offsets; the pairs routed to other experts,
  sorted by expert, through the layer's detached ``(E, ...)`` weights (``"no_grad"``: without
  autograd; ``"detach"``: gradient to the input and routing weights only);
- padding and "no expert" pairs are dropped; rows past a call's last offset are zeroed.

After backward, :func:`hand_over` reads every layer's slots, which of them hold a chosen expert
and which a pair reached (plus each layer's chosen count) in ONE transfer, and gives each chosen
expert that a pair reached its slot's gradient as ``.grad`` of the per-expert leaf (a view, no
copy, as the per-layer path's stacked gradient). Chosen experts no pair reached keep ``.grad``
None, as in the per-layer path; unchosen experts never get one.

Which layers: fused layouts whose experts compute ``down(act(gate) * up)`` or ``down(act(up))``
(gated or not, transposed or not, biases), i.e. transformers' experts-registry classes without a
post-expert norm and the MoEfied BERT / MoE-adapter experts (:func:`supports`). LoRA experts and
Switch's per-expert modules keep the per-layer path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from hfedmoe.moe.expert_compute import fused_expert_apply

_NAMES = ("gate_up_proj", "gate_up_proj_bias", "up_proj", "up_proj_bias", "down_proj", "down_proj_bias")
_ALIGN_BYTES = 16  # grouped_mm needs 16-byte aligned strides


def supports(experts: nn.Module, param_names: list[str]) -> bool:
    """True when the grouped :func:`~hfedmoe.moe.expert_compute.fused_expert_apply` computes exactly what ``experts``' own forward does."""
    if not set(param_names) <= set(_NAMES) or "down_proj" not in param_names:
        return False
    if getattr(experts, "has_post_expert_norm", False) or not hasattr(F, "grouped_mm"):
        return False
    if not all(getattr(experts, n).is_floating_point() for n in param_names):  # quantised storage
        return False
    from hfedmoe.moe.minilm import MoEFiedExperts

    registry = getattr(getattr(experts, "config", None), "_experts_implementation", None) is not None
    return registry or isinstance(experts, MoEFiedExperts)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a view whose row stride is a multiple of 16 bytes (a zero-padded copy if needed)."""
    step = max(_ALIGN_BYTES // t.element_size(), 1)
    width = t.shape[-1]
    if t.stride(-1) == 1 and all(s % step == 0 for s in t.stride()[:-1]):
        return t
    padded = -(-width // step) * step
    return F.pad(t, (0, padded - width))[..., :width]


class _AlignedGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient with 16-byte aligned rows: grouped_mm's
    backward refuses an unaligned output gradient (e.g. 18 float32 per row)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _aligned(grad)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool, *,
                   offs: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Rows of ``x (P, in)`` grouped by ``offs (G,)`` (int32 ends), group g through ``weight[g]``
    (``(G, out, in)``, or ``(G, in, out)`` when ``transposed``) plus ``bias[g] (G, out)``:
    ``(P, out)``. ``group (P,)``: each row's group, G past the groups (a zero bias row: their
    garbage gradient lands there). Rows past ``offs[-1]`` are left unwritten by grouped_mm
    (garbage, in backward their input gradient too): the caller sends them nowhere
    (:class:`_GatherRows`, the dummy row of :func:`_add_grouped_pairs`)."""
    mat_b = _aligned(weight) if transposed else _aligned(weight).transpose(-2, -1)  # (G, in, out)
    y = _AlignedGrad.apply(F.grouped_mm(_aligned(x), mat_b, offs=offs))  # (P, out)
    return y + F.pad(bias, (0, 0, 0, 1))[group] if bias is not None else y


class _GatherRows(torch.autograd.Function):
    """``src[index]`` whose backward adds row r's gradient into row ``dest[r]`` of ``src``'s
    gradient, ``dest[r] = len(src)`` (rows past the groups: garbage) going nowhere. Cheaper than
    masking the rows (``torch.where`` on the CPU costs several copies)."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(dest)
        ctx.num_rows = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (dest,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.num_rows + 1, *grad.shape[1:])).index_add_(0, dest, grad)
        return out[:ctx.num_rows], None, None


def _add_grouped_pairs(out: torch.Tensor, experts: nn.Module, tensors: dict[str, torch.Tensor],
                       hidden_states: torch.Tensor, token: torch.Tensor, weight: torch.Tensor, key: torch.Tensor,
                       num_groups: int, no_grad: bool) -> torch.Tensor:
    """``out (T+1, H)`` plus, for every pair with ``key < num_groups``, its token's row through group
    ``key``'s tensors times its routing weight. Row T takes the rows past the groups (garbage)."""
    num_tokens, num_pairs = hidden_states.shape[0], key.shape[0]
    order = torch.argsort(key, stable=True)  # (P,) grouped pairs first, by group
    counts = torch.zeros(num_groups + 1, dtype=torch.long, device=key.device).index_add_(0, key, torch.ones_like(key))
    offs = torch.cumsum(counts[:num_groups], 0).to(torch.int32)  # (G,) group ends
    group = key[order]  # (P,) num_groups past the groups
    valid = group < num_groups  # (P,) a prefix
    source = token[order]  # (P,)
    dest = torch.where(valid, source, num_tokens)  # (P,) T = nowhere
    with torch.set_grad_enabled(torch.is_grad_enabled() and not no_grad):
        x = _GatherRows.apply(hidden_states, source, dest).to(tensors["down_proj"].dtype)  # (P, H)
        # the experts' formula with grouped projections: (P, H), garbage past the groups
        y = fused_expert_apply(experts, x, tensors, partial(grouped_linear, offs=offs, group=group))
    w = F.pad(weight, (0, 0, 0, 1))[torch.where(valid, order, num_pairs)]  # (P, 1), 0 past the groups
    return out.index_add(0, dest, (y * w).to(out.dtype))


@dataclass
class SlotRecord:
    """One layer's slots in one forward (device tensors, read by :func:`hand_over`)."""

    slots: torch.Tensor  # (b,) long: the expert in each slot
    real: torch.Tensor  # (b,) bool: the slot holds a chosen expert
    reached: torch.Tensor  # (b,) bool: some pair reached the slot (it has a gradient)
    num_chosen: torch.Tensor  # () long: experts chosen in the layer (more than b is an error)
    leaves: list[torch.Tensor]  # per parameter name, the slot leaf (b, ...)
    state: SlotState = field(default_factory=lambda: SlotState())


@dataclass
class SlotState:
    """A record's host side, all its slot leaves' gradient hooks hold (no tensor: the hooks live
    on the slot leaves, and a reference back to them would keep them alive until a garbage
    collection)."""

    host: tuple[list[int], list[int], list[int]] | None = None  # slots, real, reached, once read
    arrived: list[int] = field(default_factory=list)  # tensors whose slot gradient waits for the read


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the experts compute in: autocast's when it is on (as ``F.linear`` would), else ``dtype``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def static_experts_forward(experts: nn.Module, names: list[str], chosen: torch.Tensor, num_slots: int,
                           hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                           keep: torch.Tensor, mode: str) -> tuple[torch.Tensor, SlotRecord]:
    """One layer's experts inside ``train_only``, without a device->host read.

    ``chosen (E,)`` bool: the trainable experts; ``num_slots``: b (at least the chosen count);
    ``hidden_states (T, H)``, ``top_k_index (T, k)``, ``top_k_weights (T, k)``; ``keep (T*k,)``
    bool: the pair is computed (real token, an expert). Returns ``(T, H)`` and the layer's record.
    """
    num_experts = chosen.shape[0]
    num_tokens, k = top_k_index.shape
    device = top_k_index.device
    b = min(num_slots, num_experts)
    token = torch.arange(num_tokens, device=device).repeat_interleave(k)  # (P,) P = T*k
    expert = top_k_index.reshape(-1).clamp(0, num_experts)  # (P,) E = "no expert"
    weight = top_k_weights.reshape(-1, 1)  # (P, 1)
    slots = torch.sort((~chosen).to(torch.uint8), stable=True).indices[:b]  # (b,) chosen first, ascending
    position = torch.full((num_experts + 1,), b, dtype=torch.long, device=device)
    position[slots] = torch.arange(b, device=device)  # (E+1,) expert -> slot, b = none
    real = chosen[slots]  # (b,)
    chosen_slot = torch.cat([real, real.new_zeros(1)])  # (b+1,) the slot holds a chosen expert
    slot_of = torch.where(keep & chosen_slot[position[expert]], position[expert], b)  # (P,) b = not trained
    trained = slot_of < b  # (P,)
    frozen_key = torch.where(keep & ~trained, expert, num_experts)  # (P,)
    params = {n: getattr(experts, n) for n in names}
    dtype = _compute_dtype(device, params["down_proj"].dtype)
    leaves = [params[n].detach().index_select(0, slots).requires_grad_(True) for n in names]  # (b, ...) each
    reached = torch.zeros(b + 1, dtype=torch.bool, device=device).index_fill_(0, slot_of, True)[:b]  # (b,)
    out = hidden_states.new_zeros((num_tokens + 1, hidden_states.shape[1]))  # (T+1, H), row T: nowhere
    if b:  # the chosen experts' pairs, with gradient to their slots
        out = _add_grouped_pairs(out, experts, {n: t.to(dtype) for n, t in zip(names, leaves)}, hidden_states,
                                 token, weight, slot_of, b, no_grad=False)
    # the other pairs on detached weights: "detach" keeps the gradient to the input and routing
    # weights, "no_grad" runs them without autograd (the routing weight multiplies outside)
    out = _add_grouped_pairs(out, experts, {n: params[n].detach().to(dtype) for n in names}, hidden_states,
                             token, weight, frozen_key, num_experts, no_grad=mode != "detach")
    record = SlotRecord(slots=slots, real=real, reached=reached & real, num_chosen=chosen.sum(), leaves=leaves)
    return out[:num_tokens], record


def read_records(records: list[SlotRecord]) -> None:
    """The host values of ``records`` (each layer's slots, which hold a chosen expert, which a pair
    reached, how many were chosen) in ONE device->host read, kept on their states. ValueError
    when a layer chose more experts than its slots."""
    todo = [r for r in records if r.state.host is None]
    if not todo:
        return
    values = torch.cat([torch.cat([r.slots, r.real.long(), r.reached.long(), r.num_chosen.reshape(1)])
                        for r in todo]).tolist()  # the one device->host read of the step
    start = 0
    for record in todo:
        b = record.slots.shape[0]
        slots, real = values[start:start + b], values[start + b:start + 2 * b]
        reached, num_chosen = values[start + 2 * b:start + 3 * b], values[start + 3 * b]
        start += 3 * b + 1
        if num_chosen > sum(real):
            raise ValueError(f"static dispatch: {num_chosen} experts chosen in a layer with {b} slots "
                             "(train_only(slots=...) must be at least the budget)")
        record.state.host = (slots, real, reached)


def hand_over(slot_leaf: torch.Tensor, index: int, state: SlotState,
              expert_leaves: list[list[torch.Tensor]]) -> None:
    """Tensor ``index``'s slot gradient (``slot_leaf.grad``, ``(b, ...)``) to the chosen, reached
    experts' leaves (views of it, added to a gradient already there); the slot leaf's ``.grad`` is
    then dropped, so a second backward hands over only its own gradient."""
    grad_all, slot_leaf.grad = slot_leaf.grad, None
    slots, real, reached = state.host
    for i, (e, is_real, hit) in enumerate(zip(slots, real, reached)):
        if is_real and hit:
            leaf = expert_leaves[e][index]
            leaf.grad = grad_all[i] if leaf.grad is None else leaf.grad.add_(grad_all[i])
