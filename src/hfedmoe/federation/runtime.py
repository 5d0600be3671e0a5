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

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    """Move ``model`` to the configured device; with ``runtime.dtype`` bfloat16/float16 its forward
    runs under autocast (mixed precision) while its parameters stay as they are (float32 master
    weights: gradients, optimizer state and aggregation in float32). Returns it and the device."""
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype)
    model = model.to(device=device)
    if dtype != torch.float32:
        # the instance's forward (as accelerate does): every caller of model(...) -- training,
        # evaluation, warm-ups, generate -- computes in ``dtype``; backward follows the recorded casts
        model.forward = torch.autocast(device_type=device.type, dtype=dtype)(model.forward)
    return model, device


def prepare_model(model: nn.Module, cfg: RunConfig) -> None:
    """The run's training options on a freshly built model (both engines): attention and hidden
    dropout, gradient checkpointing."""
    set_attention_dropout(model, cfg.model.attention_dropout)
    set_hidden_dropout(model, cfg.train.dropout)
    if cfg.train.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers v5's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            raise HFedMoEError("train.gradient_checkpointing: expected a transformers model, got "
                               f"{type(model).__name__}")


def setup_model(model: nn.Module, cfg: RunConfig) -> tuple[nn.Module, torch.device]:
    """Everything a run does to a freshly built model before training, in one place for every
    engine (in-process, Flower ClientApp) and ``hfedmoe plan``: the combine rule of MoEfied
    routers, the training options (:func:`prepare_model`), then device and mixed precision
    (:func:`place_model`: autocast when ``runtime.dtype`` is bfloat16/float16). Returns the model
    and its device."""
    if cfg.model.combine != "straight-through":
        from hfedmoe.moe.minilm import set_combine

        set_combine(model, cfg.model.combine)
    prepare_model(model, cfg)
    return place_model(model, cfg)


def set_hidden_dropout(model: nn.Module, p: float) -> int:
    """Set every non-attention ``nn.Dropout`` of ``model`` (hidden, residual, FFN, classifier
    dropout) to ``p``; returns how many changed. ``p < 0`` leaves the model as built. Attention
    dropout has its own option (:func:`set_attention_dropout`)."""
    if p < 0:
        return 0
    changed = 0
    for name, module in model.named_modules():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        owner = model.get_submodule(parent) if parent else model
        if isinstance(module, nn.Dropout) and "Attention" not in type(owner).__name__:
            module.p = p
            changed += 1
    config = getattr(model, "config", None)
    for key in ("hidden_dropout_prob", "resid_pdrop", "hidden_dropout", "classifier_dropout"):
        if config is not None and getattr(config, key, None) is not None:
            setattr(config, key, p)
    return changed


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
