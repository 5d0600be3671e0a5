"""Where and how a run computes: device, parameter dtype, torch threads, attention dropout.

``runtime.device = "auto"`` picks CUDA when torch sees a GPU, else the CPU; the model, every batch
and the aggregation's running sums then live there. Checkpoints are always written from and read
into CPU memory (safetensors), so a run resumes on the same device bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from hfedmoe.config import RunConfig
from hfedmoe.errors import HFedMoEError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HFedMoEError("runtime.device: expected a device torch can use, got 'cuda' "
                           "(torch.cuda.is_available() is False: no GPU or a CPU-only torch build)")
    if name not in ("cpu", "cuda"):
        raise HFedMoEError(f"runtime.device: expected auto | cpu | cuda, got {name!r}")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise HFedMoEError(f"runtime.dtype: expected one of {' | '.join(DTYPES)}, got {name!r}") from None


def place_model(model: nn.Module, cfg: RunConfig) -> tuple[nn.Module, torch.device]:
    """Move ``model`` to the configured device and dtype (floating tensors only); returns it and the device."""
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype)
    model = model.to(device=device)
    if dtype != torch.float32 and not getattr(model, "is_quantized", False):  # 4-bit: loaded in bf16
        model = model.to(dtype=dtype)
    return model, device


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the attention-probability dropout of every attention module to ``p``; returns how many
    modules changed. ``p < 0`` leaves the model as built. Covers BERT-style ``*SelfAttention.dropout``
    modules and decoder attention with an ``attention_dropout`` float (Mixtral, Qwen, ...)."""
    if p < 0:
        return 0
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if "Attention" in name and isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout.p = p
            changed += 1
        elif "Attention" in name and isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            changed += 1
    config = getattr(model, "config", None)
    for key in ("attention_probs_dropout_prob", "attention_dropout"):
        if config is not None and hasattr(config, key):
            setattr(config, key, p)
    return changed


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """``torch.set_num_threads(num_threads)`` for the block (0: leave torch's default), restored after."""
    before = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
