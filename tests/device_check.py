"""A GPU-placement checker that runs on the CPU.

:class:`DeviceCheck` is a ``TorchFunctionMode`` that simulates a second device: every parameter
and buffer of the watched model, every tensor moved with ``Tensor.to(<torch.device>)`` (what
:func:`hfedmoe.client.train.to_device` does), every tensor created with ``device=<torch.device>``
and every result of an op that had a "device" input is *tagged*. Then

- an op that mixes a tagged tensor with an untagged tensor of one or more dimensions is a
  **finding** (on a GPU: "Expected all tensors to be on the same device"; untagged 0-dim tensors
  are CPU scalars, which CUDA ops accept);
- a device -> host read (``item``, ``tolist``, ``cpu``, ``bool()``, boolean-mask indexing,
  ``nonzero`` ...) of a tagged tensor is **counted**, per op and per source line.

Which ``torch.device`` is "the device" on a CPU-only machine: every ``tensor.device`` read from a
tagged tensor returns a fresh ``torch.device`` object, and the checker remembers those objects
(plus any passed to :meth:`DeviceCheck.device_object`); ``.to(d)`` / ``device=d`` with one of them
is a move to the device, with any other ``torch.device`` or ``"cpu"`` a move to the host.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

T = torch.Tensor
_TO = {T.to, T.cuda, T.cpu}
# device -> host reads (a sync on a GPU): the value or a data-dependent shape reaches the host
_READS = {
    T.item, T.tolist, T.numpy, T.__bool__, T.__int__, T.__float__, T.__index__, T.__repr__, T.__format__,
    T.nonzero, torch.nonzero, T.argwhere, torch.argwhere, T.unique, torch.unique, torch.unique_consecutive,
    T.masked_select, torch.masked_select, T.bincount, torch.bincount, torch.equal, T.equal, torch.allclose,
    T.allclose, T.__array__,
}
_FACTORIES_DEVICE_KW = "device"


def _walk(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _walk(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _walk(o)


def _target(func, args, kwargs, device_ids) -> str | None:
    """"device" / "host" / "tensor" (like another tensor) / None (no device given) for a
    ``.to``/``.cpu``/``.cuda`` call or a factory."""
    if func is T.cpu:
        return "host"
    if func is T.cuda:
        return "device"
    cands = list(args[1:]) if func is T.to else []
    if "device" in kwargs:
        cands.append(kwargs["device"])
    for c in cands:
        if isinstance(c, str):
            return "host" if c.startswith("cpu") else "device"
        if isinstance(c, torch.device):
            return "device" if id(c) in device_ids else "host"
        if isinstance(c, torch.Tensor):  # .to(other): other's side
            return "tensor"
    return None


class DeviceCheck(TorchFunctionMode):
    """Tag model tensors and moved batches as "on the device"; collect mixes and count reads.

    Use as ``with DeviceCheck(model) as dc: ...``; then ``dc.findings`` (list of strings) and
    ``dc.reads`` (Counter by op name), ``dc.read_sites`` (Counter by ``file:line``)."""

    def __init__(self, *models: torch.nn.Module) -> None:
        super().__init__()
        self.token = object()
        self.findings: list[str] = []
        self.reads: Counter = Counter()
        self.read_sites: Counter = Counter()
        self._finding_sites: set[str] = set()
        self._models = models
        self._device_objs: dict[int, torch.device] = {}  # id -> object (kept alive: ids stay unique)

    # tagging -------------------------------------------------------------------------------
    def tag(self, t: torch.Tensor) -> torch.Tensor:
        t._hf_device_tag = self.token
        return t

    def on_device(self, t: torch.Tensor) -> bool:
        return getattr(t, "_hf_device_tag", None) is self.token

    def device_object(self, device: torch.device) -> torch.device:
        """Declare ``device`` (e.g. the engine's resolved device) as the simulated device."""
        self._device_objs[id(device)] = device
        return device

    def watch(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            self.tag(p)
        for b in model.buffers():
            self.tag(b)

    def __enter__(self):
        for m in self._models:
            self.watch(m)
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        for m in self._models:
            for t in (*m.parameters(), *m.buffers()):
                t.__dict__.pop("_hf_device_tag", None)
        return out

    # bookkeeping -----------------------------------------------------------------------------
    @staticmethod
    def _site() -> str:
        """file:line of the innermost frame in the project's sources (else the innermost outside torch)."""
        f = sys._getframe(2)
        fallback = None
        while f is not None:
            name = f.f_code.co_filename
            if "/hfedmoe/" in name and not name.endswith("device_check.py"):
                return f"{name.split('/hfedmoe/')[-1]}:{f.f_lineno}"
            if fallback is None and "/torch/" not in name and not name.endswith("device_check.py"):
                fallback = f"{name.rsplit('/', 1)[-1]}:{f.f_lineno}"
            f = f.f_back
        return fallback or "?"

    def _read(self, func) -> None:
        self.reads[getattr(func, "__name__", str(func))] += 1
        self.read_sites[self._site()] += 1

    def _finding(self, func, dev, host) -> None:
        site = self._site()
        key = f"{site} {getattr(func, '__name__', func)}"
        if key in self._finding_sites:
            return
        self._finding_sites.add(key)
        self.findings.append(f"{key}: device {[tuple(t.shape) for t in dev][:3]} with host "
                             f"{[tuple(t.shape) for t in host][:3]}")

    @property
    def num_reads(self) -> int:
        return sum(self.reads.values())

    def reset_counts(self) -> None:
        self.reads.clear()
        self.read_sites.clear()

    # the mode --------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = list(_walk((args, kwargs)))
        dev = [t for t in tensors if self.on_device(t)]
        if getattr(func, "__self__", None) is T.device:  # tensor.device
            out = func(*args, **kwargs)
            return self.device_object(out) if dev else out
        target = _target(func, args, kwargs, self._device_objs) if (func in _TO or _FACTORIES_DEVICE_KW in kwargs) else None
        if func in _TO and args:  # moves: no mixing question, only a direction
            src_dev = self.on_device(args[0])
            out = func(*args, **kwargs)
            if target == "tensor":
                target = "device" if any(self.on_device(t) for t in tensors[1:]) else "host"
            if target is None:
                target = "device" if src_dev else "host"
            if target == "device":
                if out is args[0] and not src_dev:
                    out = out.clone()  # a real move makes a new tensor
                self.tag(out)
            elif src_dev:
                self._read(func)
                if out is args[0]:
                    out = out.detach().clone()
            return out
        if dev:
            host = [t for t in tensors if not self.on_device(t) and t.dim() > 0]
            if host:
                self._finding(func, dev, host)
            if func in _READS:
                self._read(func)
            elif func in (T.__getitem__, T.index_select) and any(
                    t.dtype == torch.bool for t in tensors[1:]):
                self._read(func)  # boolean-mask indexing: data-dependent shape
            elif func in (T.repeat_interleave, torch.repeat_interleave) and "output_size" not in kwargs and (
                    len(args) > 1 and isinstance(args[1], torch.Tensor) or isinstance(kwargs.get("repeats"),
                                                                                     torch.Tensor)):
                self._read(func)  # tensor repeats without output_size: the output length is read
            elif func is torch.where and len(args) == 1:
                self._read(func)
        out = func(*args, **kwargs)
        if dev or target == "device":
            for t in _walk(out):
                if target == "host" or func in (T.cpu, T.tolist, T.numpy):
                    continue
                self.tag(t)
        return out
