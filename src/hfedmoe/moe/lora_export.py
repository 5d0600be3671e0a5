"""Export a run's global LoRA experts as a PEFT adapter directory.

``PeftModel.from_pretrained(base, out_dir)`` on the run's *base* model (the model the run started
from, before federation: for the built-in models ``hfedmoe.federation.model.build_model(cfg.model,
..., cfg.seed)``, for ``model.name = "hf"`` the checkpoint at ``model.path``) then computes what
the run's global model computes:

* ``adapter_model.safetensors`` holds the LoRA factors of every fused expert tensor, exactly the
  keys PEFT's ``get_peft_model_state_dict`` gives for the run's ``target_parameters``;
* routers and every dense module the run trained (``train.trainable``: routers, attention, norms,
  embeddings, head, shared experts) are PEFT ``modules_to_save``: their trained weights are stored
  under ``base_model.model.<module>.<tensor>``, the keys PEFT writes for ``modules_to_save``
  (checked against PEFT's own ``save_pretrained`` in the tests). A module whose weight is tied
  to another (SmolLM2's embeddings and LM head) is saved with all its aliases, so the loaded
  model uses the trained weight in both places.

No second model is built: the tensors come from the live model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

PREFIX = "base_model.model."


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def trained_modules(mm, parts: Iterable[str]) -> list[str]:
    """Module names (in ``mm.model``) owning a router or dense parameter trained under ``parts``,
    with every alias of a tied parameter."""
    from hfedmoe.client.parts import dense_names_for

    parts = list(parts)
    dense = mm.dense_named_parameters()
    trained = {id(dense[n]) for n in dense_names_for(list(dense), parts)}
    if "routers" in parts:
        trained |= {id(p) for p in mm.router_parameters()}
    modules = {_owner(n) for n, p in mm.model.named_parameters(remove_duplicate=False) if id(p) in trained}
    if "" in modules:
        raise ValueError("a trained parameter sits on the top-level model: PEFT modules_to_save cannot hold it")
    return sorted(modules)


def export_peft(mm, out_dir: str | Path, parts: Iterable[str], *, base_model_name_or_path: str | None = None,
                info: dict | None = None, task_type: str | None = None) -> Path:
    """Write ``mm``'s global adapter (a :class:`~hfedmoe.moe.lora_model.LoraMoEModel`) to ``out_dir``
    as a PEFT directory; ``parts`` = the run's ``train.trainable``; ``info`` (e.g. the round and
    its evaluation) goes to ``hfedmoe_export.json`` next to it; ``task_type`` (e.g. ``"CAUSAL_LM"``:
    ``AutoPeftModelForCausalLM`` needs it) goes to the adapter config. Returns ``out_dir``."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from hfedmoe.moe.lora_model import is_lora

    if not is_lora(mm):
        raise ValueError("export_peft: the model has no LoRA experts (model.lora_r = 0)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modules = trained_modules(mm, parts)
    tensors: dict[str, torch.Tensor] = dict(get_peft_model_state_dict(mm.peft_model))
    named = dict(mm.model.named_modules())
    for name in modules:
        for local, t in named[name].state_dict().items():
            tensors[f"{PREFIX}{name}.{local}"] = t
    # safetensors refuses tensors sharing storage (tied weights, views): one contiguous copy each
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    config = LoraConfig(r=mm.lora_r, lora_alpha=mm.lora_alpha, lora_dropout=0.0, target_modules=[],
                        target_parameters=list(mm.lora_targets), modules_to_save=modules or None,
                        base_model_name_or_path=base_model_name_or_path, inference_mode=True, task_type=task_type)
    config.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    if info is not None:
        (out / "hfedmoe_export.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    return out
