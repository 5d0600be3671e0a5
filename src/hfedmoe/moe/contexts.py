"""Routing records and the context managers of the adapter: capture, restrict, train_only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from hfedmoe.moe import static_dispatch
from hfedmoe.moe.layouts import FamilySpec
from hfedmoe.moe.protocol import AdapterCore


_MODES = ("no_grad", "detach")
DISPATCHES = ("loop", "static")


class _RoutingFields(NamedTuple):
    gate_probs: torch.Tensor
    topk_idx: torch.Tensor
    token_mask: torch.Tensor


class LayerRouting(_RoutingFields):
    """Routing of one MoE layer for one forward.

    Attributes
    ----------
    gate_probs : Tensor
        ``(T, E)`` float32, detached router probabilities of every token.
    topk_idx : Tensor
        ``(T, k)`` long, the experts each token was routed to.
    token_mask : Tensor
        ``(T,)`` bool, True for real (non-padding) tokens.

    Besides the three fields, an instance may carry ``memo``: a dict shared by every record of the
    same layer and forward (the selector's and the capture's), so importance scores computed by a
    selector are reused by the client (:func:`routing_scores`) instead of computed twice; and
    ``seq_len``: the padded length S of the (B, S) batch whose T = B * S tokens these are (None
    when the adapter saw no attention mask of that size), for sequence pooling.
    """

    def with_memo(self, memo: dict, seq_len: int | None = None) -> LayerRouting:
        self.memo = memo
        self.seq_len = seq_len
        return self


def routing_seq_ids(routing: LayerRouting) -> torch.Tensor:
    """(T,) long: the sequence of each token of this routing (token t belongs to t // S)."""
    seq_len = _seq_len(routing, "sequence")
    return torch.arange(routing.gate_probs.shape[0], device=routing.gate_probs.device) // seq_len


def _seq_len(routing: LayerRouting, pooling: str) -> int | None:
    """S of sequence pooling (a host int the adapter recorded: no device read); None for "token"."""
    if pooling == "token":
        return None
    if pooling != "sequence":
        raise ValueError(f"pooling: expected one of 'token', 'sequence', got {pooling!r}")
    num_tokens = routing.gate_probs.shape[0]
    seq_len = getattr(routing, "seq_len", None)
    if not seq_len or num_tokens % seq_len:
        raise ValueError(f"pooling='sequence': cannot map {num_tokens} routed tokens onto sequences of length "
                         f"{seq_len} (run the forward with its (B, S) attention_mask)")
    return seq_len


def _memoised(routing: LayerRouting, name: str, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` once per layer and forward for ``(token_mask, *key)``, kept in the routing's
    memo. Masks match by identity only (the adapter makes one token mask per attention-mask object;
    comparing values would read the device): another mask object is computed anew."""
    memo = getattr(routing, "memo", None)
    if memo is None:
        return compute()
    for (mask, other), value in memo.get(name, []):
        if other == key and mask is routing.token_mask:
            return value
    value = compute()
    memo.setdefault(name, []).append(((routing.token_mask, key), value))
    return value


def routing_scores(routing: LayerRouting, lam: float, pooling: str = "token") -> torch.Tensor:
    """``s_b`` (Eq. 5, (E,)) of this routing: :func:`~hfedmoe.core.importance.score_experts`
    computed without host reads (:func:`~hfedmoe.core.importance.masked_token_scores`), once per
    layer, forward, ``lam`` and ``pooling`` (memoised on the routing's ``memo``)."""
    from hfedmoe.core.importance import masked_token_scores

    seq_len = _seq_len(routing, pooling)
    return _memoised(routing, "scores", (lam, pooling), lambda: masked_token_scores(
        routing.gate_probs, routing.token_mask, lam, seq_len))


def routing_kl(routing: LayerRouting, pooling: str = "token") -> torch.Tensor:
    """``KL_e`` of Eq. 14 ((E,)) of this routing, memoised like :func:`routing_scores`."""
    from hfedmoe.core.importance import masked_token_kl

    seq_len = _seq_len(routing, pooling)
    return _memoised(routing, "kl", (pooling,), lambda: masked_token_kl(
        routing.gate_probs, routing.token_mask, seq_len))


def routing_ib_scores(routing: LayerRouting, lam: float, beta: float, pooling: str = "token",
                      ib_scale: str = "raw") -> torch.Tensor:
    """Eq. 14 scores of this routing, equal to :func:`~hfedmoe.core.importance.ib_scores` (with
    the routed experts as the candidates of ``ib_scale="normalised"``) but reusing the memoised
    ``s_b`` and ``KL``; no device->host read."""
    from hfedmoe.core.importance import ib_combine
    from hfedmoe.core.selection import routed_pair_counts

    scores = routing_scores(routing, lam, pooling)
    if beta == 0:
        return scores.clone()
    candidates = None
    if ib_scale != "raw":
        candidates = routed_pair_counts(routing.topk_idx, routing.token_mask, scores.shape[0]) > 0  # (E,)
    return ib_combine(scores, routing_kl(routing, pooling), beta, ib_scale=ib_scale, candidates=candidates)


@dataclass
class _Layer:
    """Static facts about one MoE layer of a wrapped model."""

    index: int
    spec: FamilySpec
    path: str  # module path of the MoE block inside the model
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    role: str | None  # "encoder" / "decoder" for Switch, else None
    num_experts: int
    top_k: int
    param_names: list[str]



def check_subsets(
    subsets, what: str, *, num_layers: int, num_experts: int, top_k: int, min_size: bool
) -> list[list[int] | None]:
    """Validate per-layer expert subsets (None = all experts); return sorted index lists."""
    if isinstance(subsets, (str, bytes)) or not isinstance(subsets, Sequence):
        raise ValueError(f"{what}: subsets must be a sequence with one entry per MoE layer")
    if len(subsets) != num_layers:
        raise ValueError(
            f"{what}: got {len(subsets)} subsets, expected one per MoE layer ({num_layers})"
        )
    out: list[list[int] | None] = []
    for layer, subset in enumerate(subsets):
        if subset is None:
            out.append(None)
            continue
        if isinstance(subset, torch.Tensor):
            subset = subset.flatten().tolist()
        values = sorted({int(e) for e in subset})
        if len(values) != len(list(subset)):
            raise ValueError(f"{what}: layer {layer} subset {list(subset)} has duplicates")
        if any(e < 0 or e >= num_experts for e in values):
            raise ValueError(
                f"{what}: layer {layer} subset {values} has indices outside [0, {num_experts})"
            )
        if min_size and len(values) < top_k:
            raise ValueError(
                f"{what}: layer {layer} subset {values} has {len(values)} experts, fewer than "
                f"top_k={top_k}; a restricted router needs at least top_k experts"
            )
        out.append(values)
    return out


def _sizes(adapter: AdapterCore) -> dict[str, int]:
    return {"num_layers": adapter.num_layers, "num_experts": adapter.num_experts, "top_k": adapter.top_k}


# --------------------------------------------------------------------------------------------
# context objects
# --------------------------------------------------------------------------------------------
class RoutingCapture:
    """Routing of every MoE layer for the last forward run inside the context.

    Attributes
    ----------
    gate_probs, topk_idx, token_mask : dict[int, Tensor]
        Per MoE layer: ``(T, E)`` float32, ``(T, k)`` long, ``(T,)`` bool (see :class:`LayerRouting`).
    """

    def __init__(self, adapter: AdapterCore, attention_mask: torch.Tensor | None, *, live: bool = False):
        self._adapter = adapter
        self.attention_mask = attention_mask
        self.live = live
        self.live_probs: dict[int, torch.Tensor] = {}  # live=True: (T, E) probabilities with autograd
        self.gate_probs: dict[int, torch.Tensor] = {}
        self.topk_idx: dict[int, torch.Tensor] = {}
        self.token_mask: dict[int, torch.Tensor] = {}
        self.memos: dict[int, dict] = {}
        self.seq_lens: dict[int, int | None] = {}

    def layer(self, layer: int) -> LayerRouting:
        """The routing of MoE layer ``layer`` in the last forward."""
        if layer not in self.gate_probs:
            raise KeyError(f"no routing captured for MoE layer {layer} (run a forward inside the context)")
        routing = LayerRouting(self.gate_probs[layer], self.topk_idx[layer], self.token_mask[layer])
        return routing.with_memo(self.memos.get(layer, {}), self.seq_lens.get(layer))

    def _record(self, layer: int, routing: LayerRouting) -> None:
        self.gate_probs[layer], self.topk_idx[layer], self.token_mask[layer] = routing
        memo = getattr(routing, "memo", None)
        self.memos[layer] = memo if memo is not None else {}  # the same dict as the selector's record
        self.seq_lens[layer] = getattr(routing, "seq_len", None)

    def __enter__(self) -> RoutingCapture:
        self._adapter._push("capture", self)
        return self

    def __exit__(self, *exc) -> None:
        self._adapter._pop("capture", self)


class RoutingRestriction:
    """Tokens of MoE layer l may only be routed to ``subsets[l]`` while the context is active."""

    def __init__(self, adapter: AdapterCore, subsets: Sequence[Sequence[int] | None]):
        self._adapter = adapter
        self.subsets = check_subsets(subsets, "restrict_routing", min_size=True, **_sizes(adapter))
        self.allowed_masks: list[torch.Tensor | None] = []
        for info, subset in zip(adapter._layers, self.subsets):
            if subset is None:
                self.allowed_masks.append(None)
                continue
            mask = torch.zeros(info.num_experts, dtype=torch.bool, device=adapter._router_device(info))
            mask[list(subset)] = True
            self.allowed_masks.append(mask)

    def __enter__(self) -> RoutingRestriction:
        self._adapter._push("restrict", self)
        return self

    def __exit__(self, *exc) -> None:
        self._adapter._pop("restrict", self)


class TrainOnly:
    """Only the selected experts of each layer take part in backward while the context is active.

    A selector may answer with a device mask ``(E,)`` bool instead of indices: the choice then
    stays on the device until the layer's experts forward reads it together with its dispatch
    sizes (one device->host read per layer for both, ``moe/hooks.py``).

    Attributes
    ----------
    selected : dict[int, Tensor]
        Per MoE layer, the sorted LongTensor of trainable experts in the last forward (a choice
        still on the device is read first, all such layers in one read).
    mode : str
        ``"no_grad"`` or ``"detach"``.
    dispatch : str
        ``"loop"`` (one read per layer) or ``"static"`` (:mod:`hfedmoe.moe.static_dispatch`: no read
        in the forward, one per step; fused layouts it supports, the others loop).
    slots : int or None
        Static dispatch: the slots of a layer whose choice is a device mask (the budget); None:
        such layers loop. A host choice has as many slots as experts chosen.
    """

    def __init__(
        self,
        adapter: AdapterCore,
        subsets: Sequence[Sequence[int] | None] | Callable[[int, LayerRouting], Sequence[int]],
        mode: str,
        attention_mask: torch.Tensor | None,
        dispatch: str = "loop",
        slots: int | None = None,
    ):
        if mode not in _MODES:
            raise ValueError(f"train_only mode must be one of {_MODES}, got {mode!r}")
        if dispatch not in DISPATCHES:
            raise ValueError(f"train_only dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        self._adapter = adapter
        self.mode = mode
        self.dispatch = dispatch
        self.slots = slots
        self._records: dict[int, list] = {}  # layer -> static_dispatch.SlotRecord per forward
        self.attention_mask = attention_mask
        self._selected: dict[int, torch.Tensor] = {}
        self._selected_sets: dict[int, set[int] | None] = {}
        self._pending: dict[int, torch.Tensor] = {}  # layer -> (E,) bool device mask not read yet
        self._saved_requires_grad: list[tuple[nn.Parameter, bool]] = []
        if callable(subsets):
            self.selector: Callable | None = subsets
            self.subsets = None
        else:
            self.selector = None
            self.subsets = check_subsets(subsets, "train_only", min_size=False, **_sizes(adapter))
            for info, subset in zip(adapter._layers, self.subsets):
                self._set_selected(info.index, info.num_experts, subset)

    @property
    def selected(self) -> dict[int, torch.Tensor]:
        self._flush_static()
        if self._pending:  # choices no experts forward read (e.g. a layer no token reached)
            layers = sorted(self._pending)
            masks = torch.stack([self._pending[layer] for layer in layers]).tolist()  # one read
            for layer, row in zip(layers, masks):
                self.resolve(layer, [e for e, c in enumerate(row) if c])
        return self._selected

    def _set_selected(self, layer: int, num_experts: int, subset: Sequence[int] | None) -> None:
        self._pending.pop(layer, None)
        if subset is None:
            self._selected[layer] = torch.arange(num_experts, dtype=torch.long)
            self._selected_sets[layer] = None
        else:
            self._selected[layer] = torch.tensor(sorted(subset), dtype=torch.long)
            self._selected_sets[layer] = set(subset)

    def pending_mask(self, layer: int) -> torch.Tensor | None:
        """``(E,)`` bool device mask of a selector's choice not read yet (None: known on the host)."""
        return self._pending.get(layer)

    def resolve(self, layer: int, choice: Sequence[int]) -> None:
        """The host values of layer ``layer``'s pending choice (read by the experts forward)."""
        self._set_selected(layer, len(self._pending[layer]), sorted(choice))

    def selected_set(self, layer: int) -> set[int] | None:
        """Layer ``layer``'s trainable experts on the host (None: all); a pending choice is read."""
        if layer in self._pending:
            _ = self.selected
        return self._selected_sets.get(layer)

    def static_slots(self, layer: int, num_experts: int) -> int | None:
        """Slots of layer ``layer`` under static dispatch (None: this layer loops)."""
        if self.dispatch != "static":
            return None
        if layer in self._pending:
            return self.slots
        chosen = self._selected_sets.get(layer)
        return num_experts if chosen is None else len(chosen)

    def chosen_mask(self, layer: int, num_experts: int, device: torch.device) -> torch.Tensor:
        """``(E,)`` bool on ``device``: layer ``layer``'s trainable experts (no read)."""
        pending = self._pending.get(layer)
        if pending is not None:
            return pending.to(device)
        chosen = self._selected_sets.get(layer)
        mask = torch.zeros(num_experts, dtype=torch.bool)
        mask[sorted(chosen) if chosen is not None else slice(None)] = True
        return mask.to(device)

    def add_record(self, layer: int, record) -> None:
        """A static layer's slots. A slot gradient reaches the experts' leaves when it arrives if
        the slots were read already, else at the step's one read (:attr:`selected`, or exit)."""
        self._records.setdefault(layer, []).append(record)
        leaves, state = self._adapter._leaves[layer], record.state  # no reference to the slot leaves

        def hook(index: int):
            def on_grad(slot_leaf: torch.Tensor) -> None:
                if state.host is not None:
                    static_dispatch.hand_over(slot_leaf, index, state, leaves)
                else:
                    state.arrived.append(index)
            return on_grad

        for index, slot_leaf in enumerate(record.leaves):
            slot_leaf.register_post_accumulate_grad_hook(hook(index))

    def _flush_static(self) -> None:
        """The step's one read of the static layers' slots: their choices resolved, the slot
        gradients that arrived handed to the experts' leaves."""
        if not self._records:
            return
        records, self._records = self._records, {}
        static_dispatch.read_records([r for rs in records.values() for r in rs])  # one read, every layer
        for layer, rs in records.items():
            if layer in self._pending:  # the first forward's choice (a recomputation chose the same)
                slots, real, _ = rs[0].state.host
                self.resolve(layer, [e for e, r in zip(slots, real) if r])
            for record in rs:
                for index in record.state.arrived:
                    static_dispatch.hand_over(record.leaves[index], index, record.state, self._adapter._leaves[layer])
                record.state.arrived.clear()

    def _select(self, info: _Layer, routing: LayerRouting) -> None:
        choice = self.selector(info.index, routing)
        if isinstance(choice, torch.Tensor) and choice.dtype == torch.bool:
            if tuple(choice.shape) != (info.num_experts,):
                raise ValueError(f"selector returned a mask of shape {tuple(choice.shape)} for layer {info.index}; "
                                 f"expected ({info.num_experts},)")
            self._selected.pop(info.index, None)
            self._selected_sets.pop(info.index, None)
            self._pending[info.index] = choice.detach()
            return
        if isinstance(choice, torch.Tensor):
            choice = choice.flatten().tolist()
        choice = sorted({int(e) for e in choice})
        if any(e < 0 or e >= info.num_experts for e in choice):
            raise ValueError(
                f"selector returned experts {choice} for layer {info.index}; expected indices in "
                f"[0, {info.num_experts})"
            )
        self._set_selected(info.index, info.num_experts, choice)

    def __enter__(self) -> TrainOnly:
        adapter = self._adapter
        adapter.expert_leaves()  # build / refresh the leaves before any forward
        for info in adapter._layers:
            if info.spec.kind == "fused":
                # the fused storage is frozen; gradients flow into the per-expert leaf views
                for name in info.param_names:
                    p = getattr(info.experts, name)
                    self._saved_requires_grad.append((p, p.requires_grad))
                    p.requires_grad_(False)
            else:
                # per-expert modules (Switch): the leaves ARE the module parameters, so they must
                # require grad whatever the caller froze; unselected experts run on detached
                # weights (hooks._switch_experts_forward) and still get no gradient.
                for e in range(info.num_experts):
                    for p in info.experts[f"expert_{e}"].parameters():
                        self._saved_requires_grad.append((p, p.requires_grad))
                        p.requires_grad_(True)
        adapter._push("train", self)
        return self

    def __exit__(self, *exc) -> None:
        self._adapter._pop("train", self)
        self._flush_static()
        for p, flag in reversed(self._saved_requires_grad):
            p.requires_grad_(flag)
        self._saved_requires_grad.clear()


