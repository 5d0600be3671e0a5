"""A LoRA-experts run end to end (in-process engine): tiny causal LM, HFedMoE budgets, product/SVD
aggregation, and the exported PEFT adapter reproducing the run's last evaluation."""

from __future__ import annotations

import json
import types

import pytest
import torch

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from tests.integration.conftest import REPO

TINY_LM = REPO / "configs" / "tiny-lm.toml"
LORA = ["federation.rounds=2", "data.max_examples=160", "train.local_steps=1", "data.heldout_max_examples=8",
        "model.lora_r=4", "model.lora_alpha=8", "federation.clients_per_round=4", "data.max_length=24"]


@pytest.mark.slow  # ~25-35 s on 2 shared cores (tokenizer, 2 rounds, 3 evaluations, export, reload)
def test_tiny_lm_lora_run_exports_an_adapter_that_reproduces_its_last_evaluation(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from hfedmoe.cli.export import export_run
    from hfedmoe.client.tasks import evaluate_lm
    from hfedmoe.federation.data import build_federation
    from hfedmoe.federation.model import build_model

    cfg = load_config(TINY_LM, LORA)
    rows = Simulation(cfg, tmp_path).run()
    first, last = rows[0], rows[-1]
    assert last["round"] == 2 and last["test_perplexity"] < first["test_perplexity"]
    # clients upload LoRA slices of the experts they trained (and the parts train.trainable names)
    trained = [sum(map(sum, t)) for t in last["client_trained"].values()]
    assert sum(trained) > 0 and last["lora_experts_aggregated"] > 0
    adapter = tmp_path / "peft_adapter"
    info = json.loads((adapter / "hfedmoe_export.json").read_text())
    assert info["round"] == 2 and info["test_perplexity"] == last["test_perplexity"]

    # the user's side: the base model the run started from + PeftModel.from_pretrained
    base, tok, _ = build_model(cfg.model, 1, cfg.seed)
    loaded = PeftModel.from_pretrained(base, adapter).eval()
    fed = build_federation(cfg, tok)
    mm = types.SimpleNamespace(model=loaded)
    bs = cfg.train.eval_batch_size
    test = evaluate_lm(mm, fed.tokens, fed.test_idx, bs)
    heldout = evaluate_lm(mm, fed.heldout, torch.arange(len(fed.heldout)).numpy(), bs)
    # Same weights, same batches, same PEFT forward: equal up to float32 summation order (the run
    # evaluates through the installed pass-through forwards, which call the same class forward).
    print(f"export: test ppl {test['perplexity']!r} vs run {last['test_perplexity']!r}; held-out "
          f"{heldout['perplexity']!r} vs {last['heldout_perplexity']!r}; round 0 test ppl {first['test_perplexity']!r}")
    assert test["perplexity"] == pytest.approx(last["test_perplexity"], rel=1e-6)
    assert heldout["perplexity"] == pytest.approx(last["heldout_perplexity"], rel=1e-6)
    lora_b = [t for k, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(bool(t.abs().sum() > 0) for t in lora_b)  # B started at 0: the experts learned

    # `hfedmoe export --run DIR --peft OUT` writes the same adapter from the newest checkpoint
    out, rnd = export_run(tmp_path, tmp_path / "again")
    assert rnd == 2
    a, b = load_file(adapter / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
