"""LoRA experts on the Flower engine: the same method and aggregation code as in-process, so the
two engines produce the same global adapter bit for bit (and the same PEFT export)."""

from __future__ import annotations

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from tests.flower.conftest import FAST, TINY
from tests.flower.test_engine import assert_same_run, flower_run

LORA = FAST + ["model.lora_r=2", "model.lora_alpha=4"]


def test_flower_lora_matches_in_process_bit_for_bit(tmp_path):
    import torch
    from safetensors.torch import load_file

    Simulation(load_config(TINY, LORA), tmp_path / "sim").run()
    flower_run(load_config(TINY, LORA), tmp_path / "flower")
    assert_same_run(tmp_path / "sim", tmp_path / "flower")
    a = load_file(tmp_path / "sim" / "peft_adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "flower" / "peft_adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_A" in k for k in a)
