"""``model.load_in_4bit``: refused in one config line where CUDA or bitsandbytes is missing (this
machine: no CUDA), exit 2 from the CLI; the loader arguments; quantised weights never trained.
The 4-bit load itself needs a GPU and bitsandbytes and is not tested here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hfedmoe.cli.app import app
from hfedmoe.config.loading import load_config
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation import quant

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.toml")


def _hf_4bit(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    return ["model.name=\"hf\"", f"model.path=\"{ckpt}\"", "model.load_in_4bit=true"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_refuses_4bit_without_cuda_in_one_line_exit_2(tmp_path):
    out = tmp_path / "out"
    args = ["run", "-c", TINY, "-o", str(out)] + sum((["--set", s] for s in _hf_4bit(tmp_path)), [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert result.stderr.splitlines() == ["error: invalid config (1 problem): "
                                          "model.load_in_4bit: needs CUDA and bitsandbytes, found no CUDA device"]
    assert not out.exists()


def test_missing_bitsandbytes_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quant.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HFedMoEError, match=r"model\.load_in_4bit: needs CUDA and bitsandbytes, "
                                           r"found no bitsandbytes package$"):
        load_config(TINY, _hf_4bit(tmp_path))


def test_4bit_needs_an_hf_checkpoint_and_not_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(quant, "four_bit_problem", lambda: None)  # as if CUDA and bitsandbytes were there
    with pytest.raises(HFedMoEError, match=re.escape("model.load_in_4bit: expected false unless model.name = 'hf'")):
        load_config(TINY, ["model.load_in_4bit=true"])
    with pytest.raises(HFedMoEError, match=re.escape("runtime.device: expected auto | cuda with model.load_in_4bit")):
        load_config(TINY, [*_hf_4bit(tmp_path), 'runtime.device="cpu"'])
    assert load_config(TINY, _hf_4bit(tmp_path)).model.load_in_4bit is True


def test_loader_arguments():
    assert quant.from_pretrained_kwargs(False) == {}
    pytest.importorskip("transformers")
    kw = quant.from_pretrained_kwargs(True)
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert kw["dtype"] == torch.bfloat16 and kw["device_map"] == {"": 0}


def test_quantised_dense_weights_are_never_trained():
    from hfedmoe.client.train import trainable_dense_names
    from hfedmoe.moe import wrap
    from hfedmoe.moe.build import tiny_model

    mm = wrap(tiny_model("mixtral", seed=0))
    names = trainable_dense_names(mm, ["attention", "embeddings", "norms", "head"])
    name = next(n for n in names if "q_proj" in n)
    module = mm.model.get_submodule(name.rsplit(".", 1)[0])
    module.weight = nn.Parameter(torch.zeros(module.weight.numel() // 2, 1, dtype=torch.uint8), requires_grad=False)
    after = trainable_dense_names(mm, ["attention", "embeddings", "norms", "head"])
    assert after == [n for n in names if n != name]
