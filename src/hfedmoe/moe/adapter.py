"""``wrap(model) -> MoEModel``: address experts and routers of any supported MoE model.

What the adapter offers (see :class:`MoEModel`):

* read/write one expert ``(layer, idx)`` or a whole layer's experts stacked ``(E, *P)``;
* router weights and state, and the split of ``model.state_dict()`` keys into expert / router /
  dense keys;
* ``capture_routing``: per-token router probabilities and chosen experts of the last forward;
* ``restrict_routing``: tokens may only be routed to a subset of experts per layer;
* ``train_only``: only a subset of experts (static, or chosen per batch by a selector called inside
  the forward) takes part in backward.

How it hooks in
---------------
``wrap`` installs instance-level forwards (``types.MethodType``) on each MoE layer's router and
experts module, and a forward pre-hook on the top-level model that remembers the attention masks.
With no context active these forwards call the class's own forward, so the model computes exactly
what it computed before. The installed functions find their adapter through the module attribute
``_hfedmoe = (adapter, layer)``; ``copy.deepcopy(model)`` therefore yields a model whose adapter
(``model._hfedmoe_adapter``) addresses the copy.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

import torch
from torch import nn

from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import layouts
from hfedmoe.moe.contexts import LayerRouting, RoutingCapture, RoutingRestriction, TrainOnly, _Layer
from hfedmoe.moe.discover import find_layers
from hfedmoe.moe.token_layout import mask_source
from hfedmoe.moe.token_layout import token_layout as layout_of_tokens
from hfedmoe.moe.hooks import _fused_experts_forward, _MaskGrabber, _router_forward, _switch_experts_forward

ADAPTER_ATTR = "_hfedmoe_adapter"
__all__ = ["ADAPTER_ATTR", "LayerRouting", "MoEModel", "RoutingCapture", "RoutingRestriction", "TrainOnly", "wrap"]


# --------------------------------------------------------------------------------------------
# the adapter
# --------------------------------------------------------------------------------------------
class MoEModel:
    """A wrapped MoE model: experts and routers addressed by ``(layer, expert)``.

    Attributes
    ----------
    model : nn.Module
        The wrapped model (modified only by the installed forwards / hooks).
    family : str
        One of :data:`hfedmoe.moe.layouts.SUPPORTED_FAMILIES`.
    num_layers : int
        Number of MoE layers (dense layers are not counted), in forward order.
    num_experts, top_k, hidden_size : int

    Notes
    -----
    Layers are numbered 0..num_layers-1 in forward order (for Switch: encoder layers, then decoder).
    """

    def __init__(self, model: nn.Module, layers: list[_Layer]):
        self.model = model
        self._layers = layers
        first = layers[0]
        self.family = first.spec.name
        self.num_layers = len(layers)
        self.num_experts = first.num_experts
        self.top_k = first.top_k
        self.hidden_size = int(layouts.router_weight(first.spec, first.router).shape[1])
        self._stacks: dict[str, list] = {"capture": [], "restrict": [], "train": []}
        self._masks: dict[str, torch.Tensor | None] = {}
        self._leaves: dict[int, list[list[torch.Tensor]]] = {}
        self._leaf_ptrs: dict[int, tuple[int, ...]] = {}

    # ----------------------------------------------------------------- context bookkeeping
    def _is_active(self) -> bool:
        return any(self._stacks.values())

    def _innermost(self, kind: str):
        stack = self._stacks[kind]
        return stack[-1] if stack else None

    def _push(self, kind: str, ctx) -> None:
        self._stacks[kind].append(ctx)

    def _pop(self, kind: str, ctx) -> None:
        stack = self._stacks[kind]
        if ctx in stack:
            stack.remove(ctx)
        if not self._is_active():
            self._masks = {}

    def _layer(self, layer: int) -> _Layer:
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be an int in [0, {self.num_layers}), got {layer!r}")
        return self._layers[layer]

    def _check_expert(self, info: _Layer, idx: int) -> None:
        if not isinstance(idx, int) or not 0 <= idx < info.num_experts:
            raise ValueError(f"expert index must be an int in [0, {info.num_experts}), got {idx!r}")

    def _router_device(self, info: _Layer) -> torch.device:
        return layouts.router_weight(info.spec, info.router).device

    # ----------------------------------------------------------------- routing (installed)
    def _token_mask(self, info: _Layer, num_tokens: int, explicit: torch.Tensor | None, device) -> torch.Tensor:
        return self._token_layout(info, num_tokens, explicit, device)[0]

    def _token_layout(self, info: _Layer, num_tokens: int, explicit: torch.Tensor | None,
                      device) -> tuple[torch.Tensor, int | None]:
        """:func:`~hfedmoe.moe.token_layout.token_layout` over this forward's masks."""
        return layout_of_tokens(self._masks, info.role, num_tokens, explicit, device)

    def _route(self, layer: int, router: nn.Module, args, kwargs):
        info = self._layers[layer]
        restriction = self._innermost("restrict")
        allowed = restriction.allowed_masks[layer] if restriction is not None else None
        if allowed is None:
            output = type(router).forward(router, *args, **kwargs)
            gate_probs, topk_idx = info.spec.from_output(router, output)
        elif getattr(info.spec.route, "calls_router", False):  # restrict.route_masked
            output = info.spec.route(router, args, kwargs, allowed)
            gate_probs, topk_idx = info.spec.from_output(router, output)
        else:
            hidden_states = args[0] if args else kwargs["hidden_states"]
            output, gate_probs, topk_idx = info.spec.route(router, hidden_states, allowed)
        train = self._innermost("train")
        captures = self._stacks["capture"]
        if not captures and (train is None or train.selector is None):
            return output
        live_probs = gate_probs.float()  # (T, E), still in the autograd graph (auxiliary losses)
        gate_probs = gate_probs.detach().float()  # (T, E)
        topk_idx = topk_idx.detach().long()  # (T, k)
        num_tokens = gate_probs.shape[0]
        memo: dict = {}  # shared by this layer's records of this forward (scores computed once)
        layouts: dict[tuple, tuple[torch.Tensor, int | None]] = {}  # one token mask per attention-mask object
        def token_layout(explicit: torch.Tensor | None) -> tuple[torch.Tensor, int | None]:
            source = mask_source(self._masks, info.role, num_tokens, explicit)  # (no mask: S may depend on explicit's B)
            key = (id(source),) if source is not None else (None, id(explicit))
            if key not in layouts:  # the memo matches masks by identity: share the object
                layouts[key] = self._token_layout(info, num_tokens, explicit, gate_probs.device)
            return layouts[key]

        for capture in captures:
            mask, seq_len = token_layout(capture.attention_mask)
            capture._record(layer, LayerRouting(gate_probs, topk_idx, mask).with_memo(memo, seq_len))
            if capture.live:
                capture.live_probs[layer] = live_probs
        if train is not None and train.selector is not None:
            mask, seq_len = token_layout(train.attention_mask)
            train._select(info, LayerRouting(gate_probs, topk_idx, mask).with_memo(memo, seq_len))
        return output

    # ----------------------------------------------------------------- expert access
    def expert_param_names(self, layer: int) -> list[str]:
        """Local names of one expert's tensors, e.g. ``["gate_up_proj", "down_proj"]`` or
        ``["wi.weight", "wo.weight"]`` (Switch)."""
        return list(self._layer(layer).param_names)

    def _expert_tensors(self, info: _Layer, idx: int) -> dict[str, torch.Tensor]:
        """Live (not cloned) tensors of expert ``idx``: slices of fused storage or module params."""
        if info.spec.kind == "fused":
            return {n: getattr(info.experts, n)[idx] for n in info.param_names}
        params = dict(info.experts[f"expert_{idx}"].named_parameters())
        return {n: params[n] for n in info.param_names}

    def get_expert(self, layer: int, idx: int) -> dict[str, torch.Tensor]:
        """Detached clones of expert ``idx`` of MoE layer ``layer``: ``{name: (*P)}``."""
        info = self._layer(layer)
        self._check_expert(info, idx)
        return {n: t.detach().clone() for n, t in self._expert_tensors(info, idx).items()}

    def base_expert(self, layer: int, idx: int) -> dict[str, torch.Tensor]:
        """The expert's own weights (what it computes with); :meth:`get_expert` here, the frozen
        base tensors for LoRA experts (:mod:`hfedmoe.moe.lora_model`), whose expert tensors are
        their adapter slices. For sizes: FLOPs and memory of weights."""
        return self.get_expert(layer, idx)

    def set_expert(self, layer: int, idx: int, tensors: dict[str, torch.Tensor]) -> None:
        """Copy ``tensors`` into expert ``idx`` of MoE layer ``layer`` in place (live storage).

        Raises
        ------
        ValueError
            If the names differ from :meth:`expert_param_names` or a shape does not match.
        """
        info = self._layer(layer)
        self._check_expert(info, idx)
        live = self._expert_tensors(info, idx)
        self._check_tensors(live, tensors, f"expert {idx} of layer {layer}")
        with torch.no_grad():
            for name, target in live.items():
                target.copy_(tensors[name])

    def get_experts(self, layer: int) -> dict[str, torch.Tensor]:
        """Clones of all experts of a layer stacked: ``{name: (E, *P)}``."""
        info = self._layer(layer)
        if info.spec.kind == "fused":
            return {n: getattr(info.experts, n).detach().clone() for n in info.param_names}
        per_expert = [self._expert_tensors(info, e) for e in range(info.num_experts)]
        return {n: torch.stack([t[n].detach() for t in per_expert]) for n in info.param_names}

    def set_experts(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Copy stacked ``{name: (E, *P)}`` tensors into all experts of a layer (in place)."""
        info = self._layer(layer)
        if info.spec.kind == "fused":
            live = {n: getattr(info.experts, n) for n in info.param_names}
            self._check_tensors(live, tensors, f"experts of layer {layer}")
            with torch.no_grad():
                for name, target in live.items():
                    target.copy_(tensors[name])
            return
        shapes = {n: (info.num_experts, *t.shape) for n, t in self._expert_tensors(info, 0).items()}
        self._check_shapes(shapes, tensors, f"experts of layer {layer}")
        for e in range(info.num_experts):
            self.set_expert(layer, e, {n: t[e] for n, t in tensors.items()})

    @staticmethod
    def _check_shapes(expected: dict[str, tuple], tensors: dict[str, torch.Tensor], what: str) -> None:
        if not isinstance(tensors, dict) or set(tensors) != set(expected):
            got = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
            raise ValueError(f"{what}: expected tensors named {sorted(expected)}, got {got}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise ValueError(
                    f"{what}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(shape)}"
                )

    def _check_tensors(self, live: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], what: str) -> None:
        self._check_shapes({n: tuple(t.shape) for n, t in live.items()}, tensors, what)

    # ----------------------------------------------------------------- routers
    def router_weight(self, layer: int) -> nn.Parameter:
        """The live router weight ``(E, H)`` of MoE layer ``layer``."""
        info = self._layer(layer)
        return layouts.router_weight(info.spec, info.router)

    def router_state(self, layer: int) -> dict[str, torch.Tensor]:
        """Clones of the router's trainable tensors (``weight``, ``bias`` when present).

        DeepSeek-V3's ``e_score_correction_bias`` buffer is router state in
        :meth:`router_state_keys` but is not trainable and not included here.
        """
        info = self._layer(layer)
        return {n: p.detach().clone() for n, p in layouts.router_trainable(info.spec, info.router).items()}

    def set_router_state(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Copy ``tensors`` (names as in :meth:`router_state`) into the router in place."""
        info = self._layer(layer)
        live = layouts.router_trainable(info.spec, info.router)
        self._check_tensors(live, tensors, f"router of layer {layer}")
        with torch.no_grad():
            for name, target in live.items():
                target.copy_(tensors[name])

    def router_parameters(self) -> list[nn.Parameter]:
        """Trainable router parameters of every MoE layer."""
        return [p for info in self._layers for p in layouts.router_trainable(info.spec, info.router).values()]

    # ----------------------------------------------------------------- state_dict split
    def expert_state_keys(self) -> set[str]:
        """``model.state_dict()`` keys holding routed experts."""
        keys: set[str] = set()
        for info in self._layers:
            base = f"{info.path}.{info.spec.experts_attr}" if info.path else info.spec.experts_attr
            if info.spec.kind == "fused":
                keys.update(f"{base}.{n}" for n in info.param_names)
            else:
                keys.update(
                    f"{base}.expert_{e}.{n}" for e in range(info.num_experts) for n in info.param_names
                )
        return keys & set(self.model.state_dict().keys())

    def router_state_keys(self) -> set[str]:
        """``model.state_dict()`` keys of routers (incl. non-trainable buffers such as
        DeepSeek-V3's ``e_score_correction_bias``)."""
        keys: set[str] = set()
        for info in self._layers:
            base = f"{info.path}.{info.spec.router_attr}" if info.path else info.spec.router_attr
            keys.update(f"{base}.{k}" for k in info.router.state_dict().keys())
        return keys & set(self.model.state_dict().keys())

    def dense_named_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that is neither a routed expert nor a router (attention, embeddings,
        norms, heads, shared experts, MoEfied output bias), whatever its ``requires_grad``."""
        skip = {id(p) for p in self.router_parameters()}
        for info in self._layers:
            skip.update(id(p) for p in info.experts.parameters())
        return {n: p for n, p in self.model.named_parameters() if id(p) not in skip}

    # ----------------------------------------------------------------- leaves
    def expert_leaves(self) -> dict[tuple[int, int], list[torch.Tensor]]:
        """Persistent leaf tensors per expert ``(layer, idx)`` (order of :meth:`expert_param_names`).

        Fused layouts: views ``fused.detach()[idx]`` with ``requires_grad=True``, created once and
        cached (re-created when the parameter storage was replaced, e.g. after ``model.to(...)``:
        rebuild the optimizer then). ``optimizer.step()`` on them writes into the model's weights.
        Switch: the expert modules' own parameters. A leaf receives ``.grad`` only while its expert
        is trainable inside :meth:`train_only`.
        """
        out: dict[tuple[int, int], list[torch.Tensor]] = {}
        for info in self._layers:
            if info.spec.kind == "fused":
                params = [getattr(info.experts, n) for n in info.param_names]
                ptrs = tuple(p.data_ptr() for p in params)
                if self._leaf_ptrs.get(info.index) != ptrs or info.index not in self._leaves:
                    self._leaves[info.index] = [
                        [p.detach()[e].requires_grad_(True) for p in params] for e in range(info.num_experts)
                    ]
                    self._leaf_ptrs[info.index] = ptrs
            else:
                self._leaves[info.index] = [
                    list(self._expert_tensors(info, e).values()) for e in range(info.num_experts)
                ]
            for e, leaves in enumerate(self._leaves[info.index]):
                out[(info.index, e)] = leaves
        return out

    # ----------------------------------------------------------------- contexts
    def capture_routing(self, attention_mask: torch.Tensor | None = None, *, live: bool = False) -> RoutingCapture:
        """Context manager recording every MoE layer's routing for the last forward inside it.

        Parameters
        ----------
        attention_mask : Tensor, optional
            ``(B, S)``; 1 for real tokens. If omitted, the ``attention_mask`` (encoder / decoder-only
            layers) or ``decoder_attention_mask`` (Switch decoder layers) passed to the top-level
            model's forward is used; a layer whose token count matches no mask gets all-True.
        live : bool
            Also keep ``live_probs[layer]``: the same probabilities ``(T, E)`` *in* the autograd
            graph (auxiliary routing losses backpropagate through them into the router).

        Notes
        -----
        ``gate_probs`` are the softmax of the router logits (after any active restriction, so
        restricted experts have probability 0); for DeepSeek-V3's sigmoid router the sigmoid
        scores normalised to sum 1 per token. ``topk_idx`` are the experts actually used; for
        Switch the argmax, ignoring capacity drops.
        """
        return RoutingCapture(self, attention_mask, live=live)

    def restrict_routing(self, subsets: Sequence[Sequence[int] | None]) -> RoutingRestriction:
        """Context manager: tokens of layer l may only be routed to ``subsets[l]`` (None = any).

        Logits of the other experts are set to ``-inf`` before top-k, then the family's own rule
        applies (renormalisation, groups, scaling, capacity). A subset must hold at least ``top_k``
        experts (ValueError otherwise), so no top-k slot is ever left to a forbidden expert. For
        group-limited routers (DeepSeek) a token whose chosen groups hold fewer than ``top_k``
        allowed experts has its group limit lifted.
        """
        if self._layers[0].spec.route is None:
            raise UnsupportedModelError(
                f"restrict_routing is not available for family {self.family!r} (no route function in "
                "hfedmoe.moe.families); capture_routing and train_only are"
            )
        return RoutingRestriction(self, subsets)

    def train_only(
        self,
        subsets: Sequence[Sequence[int] | None] | Callable[[int, LayerRouting], Sequence[int]],
        mode: str = "no_grad",
        attention_mask: torch.Tensor | None = None,
        dispatch: str = "loop",
        slots: int | None = None,
    ) -> TrainOnly:
        """Context manager: expert e of layer l takes part in backward iff it is selected.

        Parameters
        ----------
        subsets : sequence per layer of expert indices (None = all experts of that layer), or a
            selector ``(layer, LayerRouting) -> Sequence[int]`` called inside the forward right
            after layer l's router ran; its answer is that layer's trainable experts for this batch.
        mode : ``"no_grad"`` (unselected experts run without autograd: no backward compute, the
            router still gets gradient through the weights multiplying their constant output) or
            ``"detach"`` (detached weights, input gradient kept).
        attention_mask : Tensor, optional
            Token mask for the selector's :class:`LayerRouting` (default: grabbed from the forward).
        dispatch, slots : ``"loop"`` (one device->host read per layer) or ``"static"`` (none in the
            forward, one per step after backward, :mod:`~hfedmoe.moe.static_dispatch`; ``slots``:
            the budget of a selector's device-mask choice), see :class:`TrainOnly`.

        Notes
        -----
        Inside, fused expert Parameters have ``requires_grad=False`` (restored on exit) and the
        selected experts compute with :meth:`expert_leaves`, so only those receive ``.grad``.
        Routers and dense parameters are left alone. With gradient checkpointing the recomputed
        forward calls the selector again; it must then answer the same (be deterministic).
        """
        return TrainOnly(self, subsets, mode, attention_mask, dispatch, slots)

    def __repr__(self) -> str:
        return (
            f"MoEModel(family={self.family!r}, model={type(self.model).__name__}, num_layers={self.num_layers}, "
            f"num_experts={self.num_experts}, top_k={self.top_k}, hidden_size={self.hidden_size})"
        )


# --------------------------------------------------------------------------------------------
# wrap
# --------------------------------------------------------------------------------------------
def wrap(model: nn.Module) -> MoEModel:
    """Find the MoE layers of ``model`` (in forward order) and return its :class:`MoEModel`.

    Idempotent: the adapter is stored on ``model._hfedmoe_adapter`` and returned again.

    Raises
    ------
    UnsupportedModelError
        If the model has no MoE layer of a supported family.
    """
    existing = getattr(model, ADAPTER_ATTR, None)
    if isinstance(existing, MoEModel) and existing.model is model:
        return existing
    layers = find_layers(model)
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no MoE layers this project can address; supported families: "
            f"{', '.join(layouts.SUPPORTED_FAMILIES)}"
        )
    families = {info.spec.name for info in layers}
    shapes = {(info.num_experts, info.top_k) for info in layers}
    if len(families) > 1 or len(shapes) > 1:
        raise UnsupportedModelError(
            f"{type(model).__name__} mixes MoE layer kinds {sorted(families)} / (experts, top_k) "
            f"{sorted(shapes)}; only uniform MoE models are supported"
        )
    adapter = MoEModel(model, layers)
    experts_forward = {"fused": _fused_experts_forward, "modules": _switch_experts_forward}
    for info in layers:
        info.router._hfedmoe = (adapter, info.index)
        info.experts._hfedmoe = (adapter, info.index)
        info.router.forward = types.MethodType(_router_forward, info.router)
        info.experts.forward = types.MethodType(experts_forward[info.spec.kind], info.experts)
    model.register_forward_pre_hook(_MaskGrabber(adapter), with_kwargs=True)
    object.__setattr__(model, ADAPTER_ATTR, adapter)
    return adapter
