"""Save and load the MoE adapters of an adapted dense model (:mod:`hfedmoe.moe.sparse_adapter`).

Directory layout (format ``hfedmoe-moe-adapters``, version 1)::

    moe_adapter_config.json    {"format", "version", "num_experts", "top_k", "rank", "layers",
                                "hidden_act", "tensors": [names], "info": {...}}
    moe_adapters.safetensors   the tensors, named by the ADAPTED model's state_dict keys:
        <ffn>.gate.weight            (M, d)     router of each adapter
        <ffn>.experts.up_proj        (M, r, d)  expert e: up_proj[e] (r, d)
        <ffn>.experts.down_proj      (M, d, r)  expert e: down_proj[e] (d, r)
        + the trained dense tensors (e.g. the classification head ``classifier.weight``)

``<ffn>`` is where the FFN sat: ``bert.encoder.layer.{i}.intermediate`` (BERT) or
``model.layers.{i}.mlp`` (Llama-style decoders). The frozen base is not saved: rebuild the same
dense model, then :func:`load_moe_adapters` inserts the adapters and copies the tensors in::

    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=...)
    mm = load_moe_adapters(model, "runs/x/moe_adapters")   # mm.model now computes the run's model
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hfedmoe.errors import HFedMoEError
from hfedmoe.moe.sparse_adapter import add_moe_adapters, adapter_settings

FORMAT = "hfedmoe-moe-adapters"
VERSION = 1
CONFIG_FILE = "moe_adapter_config.json"
TENSORS_FILE = "moe_adapters.safetensors"


def save_moe_adapters(mm: Any, out_dir: str | Path, dense_names: Iterable[str] = (),
                      info: dict[str, Any] | None = None) -> Path:
    """Write ``mm``'s adapter experts, routers and the dense tensors ``dense_names`` to ``out_dir``.

    Raises
    ------
    HFedMoEError
        If ``mm.model`` carries no MoE adapters.
    """
    settings = adapter_settings(mm.model)
    if settings is None:
        raise HFedMoEError("export: the model has no MoE adapters (model.adapter = 'none')")
    state = mm.model.state_dict()
    names = sorted(mm.expert_state_keys() | mm.router_state_keys() | set(dense_names))
    tensors = {n: state[n].detach().to("cpu").contiguous().clone() for n in names}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / TENSORS_FILE))
    config = {"format": FORMAT, "version": VERSION, **{k: settings[k] for k in
              ("num_experts", "top_k", "rank", "layers", "hidden_act")}, "tensors": names, "info": info or {}}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_moe_adapters(model: torch.nn.Module, directory: str | Path) -> Any:
    """Insert the adapters described in ``directory`` into the dense ``model`` and load their
    tensors (and the saved dense ones); returns the wrapped model (:func:`hfedmoe.moe.wrap`).

    Raises
    ------
    HFedMoEError
        A missing or foreign directory, or tensors that do not fit ``model`` (one line naming them).
    """
    from hfedmoe.moe import wrap

    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise HFedMoEError(f"load_moe_adapters: cannot read {directory / CONFIG_FILE}: {exc}") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise HFedMoEError(f"load_moe_adapters: {directory} is not a {FORMAT} v{VERSION} directory "
                           f"(format {config.get('format')!r}, version {config.get('version')!r})")
    add_moe_adapters(model, int(config["num_experts"]), int(config["top_k"]), int(config["rank"]),
                     layers=config["layers"])
    if adapter_settings(model)["hidden_act"] != config["hidden_act"]:
        raise HFedMoEError(f"load_moe_adapters: the adapters were trained with activation {config['hidden_act']!r}, "
                           f"this model's is {adapter_settings(model)['hidden_act']!r}: not the run's base model")
    tensors = load_file(str(directory / TENSORS_FILE))
    live = model.state_dict()
    missing = sorted(n for n in tensors if n not in live)
    wrong = sorted(n for n in tensors if n in live and live[n].shape != tensors[n].shape)
    if missing or wrong:
        raise HFedMoEError(f"load_moe_adapters: tensors that do not fit this model: missing {missing[:3]}, "
                           f"wrong shape {wrong[:3]} (not the run's base model?)")
    with torch.no_grad():
        for name, value in tensors.items():
            live[name].copy_(value)
    return wrap(model)


__all__ = ["CONFIG_FILE", "TENSORS_FILE", "load_moe_adapters", "save_moe_adapters"]
