"""Every budgeted method runs unchanged on MoE adapters of a frozen dense model (tiny BERT and a
tiny Llama): the base never moves, budgets hold, and the adapter experts are what is uploaded."""

import math

import numpy as np
import pytest
import torch

from hfedmoe.client.parts import part_of
from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation

from .conftest import FAST, TINY

ADAPTER = ["model.name=tiny-bert", "model.adapter=moe", "model.adapter_rank=4",
           'train.trainable=["experts", "routers", "head"]', "federation.rounds=1"]


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("adapter")
    out = {}
    for name in ("hfedmoe", "flux-freq", "random", "oracle", "fedavg", "fft-moe"):
        sim = Simulation(load_config(TINY, FAST + ADAPTER + [f"method.name={name}"]), base / name)
        before = {k: v.clone() for k, v in sim.mm.model.state_dict().items()}
        row = sim.run()[-1]
        out[name] = (sim, before, row)
    return out


def test_every_method_runs_on_adapter_experts_and_keeps_the_base(adapter_runs):
    for name, (sim, before, row) in adapter_runs.items():
        assert sim.mm.family == "moe_adapter"
        assert math.isfinite(row["test_accuracy"]) and row["rejected_clients"] == {}, name
        after = sim.mm.model.state_dict()
        experts, routers = sim.mm.expert_state_keys(), sim.mm.router_state_keys()
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert changed, name
        for k in changed:  # only adapter experts, routers and the head may move
            assert k in experts or k in routers or part_of(k) == "head", (name, k)
        frozen = [k for k in after if part_of(k) == "frozen"]
        assert frozen and not set(frozen) & changed


@pytest.mark.parametrize("name", ["hfedmoe", "flux-freq", "random", "oracle", "fft-moe"])
def test_budgets_hold_on_adapter_experts(adapter_runs, name):
    sim, _, row = adapter_runs[name]
    for cid, counts in row["client_selected_experts"].items():
        budget = sim.budgets[int(cid)].budget
        assert all(sum(layer) <= budget * 2 for layer in counts), (name, cid)  # 2 local steps
        trained = np.array(row["client_trained"][cid])
        if name == "fft-moe":
            assert (trained.sum(axis=1) <= budget).all()


@pytest.mark.slow  # ~20 s: SmolLM2's 49k-token vocabulary dominates
def test_fft_moe_on_a_tiny_llama_causal_lm(tmp_path):
    cfg = load_config(TINY, FAST + ["model.task=causal-lm", "model.name=tiny-llama", "model.adapter=moe",
                                    "model.adapter_rank=4", 'train.trainable=["experts", "routers"]',
                                    "federation.rounds=1", "method.name=fft-moe"])
    sim = Simulation(cfg, tmp_path / "lm")
    row = sim.run()[-1]
    assert sim.mm.family == "moe_adapter" and math.isfinite(row["test_loss"])
    assert row["upload_bytes"] > 0


def test_run_exports_adapters_that_reload_into_the_dense_base(adapter_runs, tmp_path):
    from hfedmoe.cli.export import export_run
    from hfedmoe.federation.model import build_base_model
    from hfedmoe.moe.adapter_export import load_moe_adapters

    sim, _, _ = adapter_runs["fft-moe"]
    cfg = sim.cfg
    ids = torch.randint(5, 1000, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    sim.mm.model.eval()
    with torch.no_grad():
        want = sim.mm.model(input_ids=ids, attention_mask=mask).logits
    for directory in (sim.out_dir / "moe_adapters", export_run(sim.out_dir, tmp_path / "cli")[0]):
        base, _, _ = build_base_model(cfg.model, sim.fed.dataset.num_labels, cfg.seed)
        mm = load_moe_adapters(base, directory)
        mm.model.eval()
        with torch.no_grad():
            got = mm.model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(got, want), directory


def test_users_dense_hf_checkpoint_takes_adapters_and_an_moe_one_is_refused_in_one_line(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, MixtralForSequenceClassification
    from typer.testing import CliRunner

    from hfedmoe.assets.models import load_minilm_tokenizer
    from hfedmoe.cli import app
    from hfedmoe.moe.build import tiny_model

    tok = load_minilm_tokenizer()
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, num_labels=2)
    dense = tmp_path / "my-dense"
    BertForSequenceClassification(config).save_pretrained(dense)
    tok.save_pretrained(dense)
    runner = CliRunner()
    sets = FAST + ["federation.rounds=1", "model.name=hf", "model.adapter=moe", "model.adapter_rank=2",
                   'train.trainable=["experts", "routers", "head"]', "method.name=fft-moe"]
    args = ["run", "--config", str(TINY), "-q", *sum([["--set", s] for s in sets], [])]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "ok"), "--set", f"model.path={dense}"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ok" / "moe_adapters" / "moe_adapters.safetensors").is_file()
    moe = tmp_path / "my-moe"  # a user's MoE checkpoint: found MoE at build time, refused in one line
    mix = tiny_model("mixtral", vocab_size=tok.vocab_size).config
    mix.num_labels = 2
    MixtralForSequenceClassification(mix).save_pretrained(moe)
    tok.save_pretrained(moe)
    res = runner.invoke(app, args + ["--out", str(tmp_path / "bad"), "--set", f"model.path={moe}"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "model.adapter: 'moe' needs a dense model" in line and "mixtral" in line
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
    res = runner.invoke(app, args + ["--out", str(tmp_path / "bad2"), "--set", "model.name=tiny-moe"])
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "model.adapter: expected 'none' for model.name = 'tiny-moe'" in line
