"""LoRA experts: a wrapped MoE model whose fused experts carry PEFT LoRA adapters, addressed per expert.

``enable_lora(mm, r, alpha)`` puts PEFT 0.21 LoRA on every fused 3-D expert tensor of ``mm.model``
(``target_parameters``: ``gate_up_proj``, ``down_proj``, ``up_proj``; expert biases stay frozen),
freezes the base weights, and turns ``mm`` into a :class:`LoraMoEModel`: from then on *an expert's
tensors* are its LoRA slices ``{"<param>.lora_A": A_e (r, in), "<param>.lora_B": B_e (out, r)}``
(sliced by :mod:`hfedmoe.moe.lora`, the one owner of PEFT's layout). Everything that works per
expert (the budget's selection, ``train_only``, the client's optimizer over ``expert_leaves``, the
upload, the round guard, the Flower codec, the aggregation) therefore works on LoRA slices
unchanged, and an unselected expert's slices get no gradient and stay bit-identical.

Forward. Outside ``train_only`` (evaluation, generation) PEFT's own ``ParamWrapper`` forward runs:
``W + scaling * B A`` for all experts, exactly what ``PeftModel.from_pretrained`` computes from an
exported adapter. Inside ``train_only`` the adapter's experts loop runs instead, expert by expert,
with ``W_e + scaling * B_e A_e`` built from the selected experts' leaf views (gradient) or from
detached slices (unselected: run without autograd in ``no_grad`` mode), on the *raw* base weights
(PEFT's parametrisation is bypassed, never evaluated).

Routers and dense parameters are untouched by LoRA: ``train.trainable`` decides as for full
fine-tuning (routers trained in full by default), and the export saves them as PEFT
``modules_to_save`` (:mod:`hfedmoe.moe.lora_export`).

Per-expert module layouts (Switch Transformers: ``experts.expert_{i}`` Linear layers) are refused
with a one-line error: PEFT's ``target_modules`` would give each expert its own adapter module,
a second slicing scheme this project does not implement.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.nn.utils import parametrize

from hfedmoe.errors import UnsupportedModelError
from hfedmoe.moe import expert_compute
from hfedmoe.moe.adapter import MoEModel
from hfedmoe.moe.hooks import _padding
from hfedmoe.moe.lora import expert_views, slice_delta

ADAPTER_NAME = "default"
#: Fused expert tensors that get LoRA (3-D ``(E, d0, d1)``); biases (2-D) stay frozen.
LORA_TARGETS = ("gate_up_proj", "up_proj", "down_proj")


class _Pair:
    """One LoRA-wrapped fused tensor of one layer: PEFT's ``ParamWrapper`` and its facts."""

    def __init__(self, wrapper: nn.Module, name: str) -> None:
        self.wrapper = wrapper
        self.name = name  # local parameter name, e.g. "gate_up_proj"
        self.scaling = float(wrapper.scaling[ADAPTER_NAME])
        self.swapped = bool(wrapper._did_swap_in_out_features)

    @property
    def lora_a(self) -> nn.Parameter:
        return self.wrapper.lora_A[ADAPTER_NAME].weight  # (E*r, in)

    @property
    def lora_b(self) -> nn.Parameter:
        return self.wrapper.lora_B[ADAPTER_NAME].weight  # (out, E*r)


class LoraMoEModel(MoEModel):
    """A :class:`MoEModel` whose expert tensors are LoRA slices (see the module docstring).

    Extra attributes: ``lora_r``, ``lora_alpha``, ``peft_model`` (the ``PeftModel`` around
    ``model``), ``lora_targets`` (full parameter names given to PEFT).
    """

    lora_r: int
    lora_alpha: float
    peft_model: nn.Module
    lora_targets: list[str]
    _pairs: dict[int, list[_Pair]]

    # ----------------------------------------------------------------- expert access (LoRA slices)
    def expert_param_names(self, layer: int) -> list[str]:
        return [f"{p.name}.lora_{x}" for p in self._pairs[self._layer(layer).index] for x in ("A", "B")]

    def _expert_tensors(self, info, idx: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for p in self._pairs[info.index]:
            out[f"{p.name}.lora_A"], out[f"{p.name}.lora_B"] = expert_views(p.lora_a, p.lora_b, info.num_experts, idx)
        return out

    def get_experts(self, layer: int) -> dict[str, torch.Tensor]:
        info = self._layer(layer)
        per_expert = [self._expert_tensors(info, e) for e in range(info.num_experts)]
        return {n: torch.stack([t[n].clone() for t in per_expert]) for n in per_expert[0]}

    def set_experts(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        info = self._layer(layer)
        shapes = {n: (info.num_experts, *t.shape) for n, t in self._expert_tensors(info, 0).items()}
        self._check_shapes(shapes, tensors, f"experts of layer {layer}")
        for e in range(info.num_experts):
            self.set_expert(layer, e, {n: t[e] for n, t in tensors.items()})

    def base_expert(self, layer: int, idx: int) -> dict[str, torch.Tensor]:
        """Clones of expert ``idx``'s frozen base tensors (what full fine-tuning would train)."""
        info = self._layer(layer)
        self._check_expert(info, idx)
        return {n: getattr(info.experts, n)[idx].detach().clone() for n in info.param_names}

    def expert_state_keys(self) -> set[str]:
        ids = {id(t) for pairs in self._pairs.values() for p in pairs for t in (p.lora_a, p.lora_b)}
        return {n for n, t in self.model.named_parameters() if id(t) in ids}

    def dense_named_parameters(self) -> dict[str, nn.Parameter]:
        skip = {id(t) for pairs in self._pairs.values() for p in pairs for t in (p.lora_a, p.lora_b)}
        return {n: t for n, t in super().dense_named_parameters().items() if id(t) not in skip}

    def expert_leaves(self) -> dict[tuple[int, int], list[torch.Tensor]]:
        """Per expert, its LoRA slices as persistent leaf views (``requires_grad=True``) of the
        ``lora_A`` / ``lora_B`` storage, in :meth:`expert_param_names` order; rebuilt when the
        storage was replaced (then rebuild the optimizer)."""
        out: dict[tuple[int, int], list[torch.Tensor]] = {}
        for info in self._layers:
            pairs = self._pairs[info.index]
            ptrs = tuple(t.data_ptr() for p in pairs for t in (p.lora_a, p.lora_b))
            if self._leaf_ptrs.get(info.index) != ptrs or info.index not in self._leaves:
                self._leaves[info.index] = [
                    [v.requires_grad_(True) for v in self._expert_tensors(info, e).values()]
                    for e in range(info.num_experts)
                ]
                self._leaf_ptrs[info.index] = ptrs
            for e, leaves in enumerate(self._leaves[info.index]):
                out[(info.index, e)] = leaves
        return out

    def lora_numel(self) -> int:
        """Parameters of one expert's LoRA slices (the trainable unit)."""
        return int(sum(t.numel() for t in self._expert_tensors(self._layers[0], 0).values()))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", lora_r={self.lora_r}, lora_alpha={self.lora_alpha})"


def is_lora(mm: MoEModel) -> bool:
    """True when ``mm``'s expert tensors are LoRA slices (:func:`enable_lora` was applied)."""
    return isinstance(mm, LoraMoEModel)


def _raw(module: nn.Module, name: str) -> torch.Tensor:
    """The module's own tensor ``name``, bypassing a PEFT parametrisation if one is active."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def _lora_experts_forward(self: nn.Module, hidden_states, top_k_index, top_k_weights):
    """Installed on each fused experts module of a :class:`LoraMoEModel` (see the module docstring)."""
    adapter, layer = self._hfedmoe
    train = adapter._innermost("train")
    if train is None:
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    info = adapter._layers[layer]
    pairs = adapter._pairs[layer]
    pending = train.pending_mask(layer)  # a selector's device-side choice: read with the loop's sizes
    selected = train.selected_set(layer) if pending is None else set()
    leaves = adapter._leaves[layer]
    base = {n: _raw(self, n).detach() for n in info.param_names}  # (E, d0, d1) / (E, d)
    pad = _padding(adapter, info, train, hidden_states)
    if pad is not None:  # index num_experts = "no expert": the loop skips it
        top_k_index = top_k_index.masked_fill(pad.unsqueeze(1), self.num_experts)

    def on_read(mask: list[int]) -> None:
        train.resolve(layer, [e for e, c in enumerate(mask) if c])
        selected.update(train.selected_set(layer))

    def weights(e: int, slices) -> dict[str, torch.Tensor]:
        tensors = {n: base[n][e] for n in info.param_names}
        for i, p in enumerate(pairs):
            tensors[p.name] = tensors[p.name] + slice_delta(slices[2 * i], slices[2 * i + 1], p.scaling, p.swapped)
        return tensors

    def run(e: int, x: torch.Tensor) -> torch.Tensor:
        if selected is None or e in selected:
            return expert_compute.fused_expert_apply(self, x, weights(e, leaves[e]))
        frozen = [t.detach() for t in leaves[e]]
        if train.mode == "no_grad":
            with torch.no_grad():
                return expert_compute.fused_expert_apply(self, x, weights(e, frozen))
        return expert_compute.fused_expert_apply(self, x, weights(e, frozen))

    return expert_compute.fused_experts_loop(self, hidden_states, top_k_index, top_k_weights, run,
                                             also_read=pending, on_read=on_read if pending is not None else None)


def enable_lora(mm: MoEModel, r: int, alpha: float) -> LoraMoEModel:
    """Put PEFT LoRA (rank ``r``, ``lora_alpha = alpha``) on every fused expert tensor of
    ``mm.model`` and return ``mm`` as a :class:`LoraMoEModel` (the same object: hooks and contexts
    keep addressing it). LoRA starts at ``B = 0`` (PEFT's default init): the model's function is
    unchanged. Base weights are frozen (``requires_grad=False``) by PEFT; what else trains is the
    client's choice (``train.trainable``).

    Raises
    ------
    UnsupportedModelError
        For per-expert module layouts (Switch Transformers) and models without 3-D expert tensors.
    """
    from peft import LoraConfig, get_peft_model

    if isinstance(mm, LoraMoEModel):
        raise ValueError("enable_lora: the model already carries LoRA experts")
    first = mm._layers[0]
    if first.spec.kind != "fused":
        raise UnsupportedModelError(
            f"model.lora_r: LoRA experts need fused 3-D expert tensors (PEFT target_parameters); family "
            f"{mm.family!r} stores each expert as its own modules: use full expert fine-tuning (lora_r = 0)")
    targets: list[str] = []
    local: dict[int, list[str]] = {}
    for info in mm._layers:
        names = [n for n in info.param_names if n in LORA_TARGETS and getattr(info.experts, n).dim() == 3]
        if not names:
            raise UnsupportedModelError(
                f"model.lora_r: MoE layer {info.index} of family {mm.family!r} has no 3-D expert tensor "
                f"among {LORA_TARGETS}")
        base = f"{info.path}.{info.spec.experts_attr}" if info.path else info.spec.experts_attr
        targets += [f"{base}.{n}" for n in names]
        local[info.index] = names
    config = LoraConfig(r=int(r), lora_alpha=alpha, lora_dropout=0.0, target_modules=[], target_parameters=targets)
    peft_model = get_peft_model(mm.model, config, adapter_name=ADAPTER_NAME)
    wrappers = [m for m in mm.model.modules() if type(m).__name__ == "ParamWrapper"]
    pairs: dict[int, list[_Pair]] = {}
    for info in mm._layers:
        mine = {w.parameter_name: w for w in wrappers if w.get_base_layer() is info.experts}
        missing = [n for n in local[info.index] if n not in mine]
        if missing:
            raise UnsupportedModelError(f"model.lora_r: PEFT did not wrap {missing} of MoE layer {info.index}")
        pairs[info.index] = [_Pair(mine[n], n) for n in local[info.index]]
        info.experts.forward = types.MethodType(_lora_experts_forward, info.experts)
    mm.__class__ = LoraMoEModel  # same object: installed forwards and hooks keep pointing at it
    lm: LoraMoEModel = mm  # type: ignore[assignment]
    lm.lora_r, lm.lora_alpha, lm.peft_model, lm.lora_targets, lm._pairs = int(r), float(alpha), peft_model, targets, pairs
    lm._leaves, lm._leaf_ptrs = {}, {}
    return lm
