"""4-bit loading of ``model.name = "hf"`` checkpoints (``model.load_in_4bit``) with bitsandbytes.

Optional: it needs a CUDA device and the ``bitsandbytes`` package, neither of which the project
installs or has been tested with (the machines that built it have no GPU). bitsandbytes replaces
the checkpoint's ``nn.Linear`` layers (attention, shared/dense MLPs) by NF4 ``Linear4bit`` layers;
transformers' fused 3-D expert tensors are not ``nn.Linear`` and stay in bfloat16, so the experts
(and routers) still train, while the quantised weights are frozen (client training skips
non-floating parameters, see ``client.train.trainable_dense_names``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch


def four_bit_problem() -> str | None:
    """Why 4-bit loading cannot run in this environment (``None``: it can)."""
    if not torch.cuda.is_available():
        return "found no CUDA device"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "found no bitsandbytes package"
    return None


def from_pretrained_kwargs(load_in_4bit: bool) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: NF4 4-bit weights, bfloat16 compute, all on GPU 0."""
    if not load_in_4bit:
        return {}
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    return {"quantization_config": quant, "device_map": {"": 0}, "dtype": torch.bfloat16}
