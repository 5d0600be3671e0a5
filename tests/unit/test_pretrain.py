"""The benchmark MoE built here: corpus split, batches, schedule, resume, cache, report, and runs on it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hfedmoe.errors import HFedMoEError
from hfedmoe.pretrain.corpus import DOMAINS, FINETUNE_PER_DOMAIN, chunk_sentences, domain_corpus, load_domains8
from hfedmoe.pretrain.presets import PRESETS, preset_dir, pretrained_path
from hfedmoe.pretrain.report import usage_entropy
from hfedmoe.pretrain.train import lr_at, pretrain, sample_batch


def test_chunk_sentences_joins_up_to_the_limit():
    text = "One two.  Three four!\nFive six? Seven."
    assert chunk_sentences(text, max_chars=20) == ["One two. Three four!", "Five six? Seven."]
    assert chunk_sentences(text, max_chars=5) == ["One two.", "Three four!", "Five six?", "Seven."]
    assert chunk_sentences("no end mark at all", 300) == ["no end mark at all"]


def test_finetune_and_pretrain_parts_are_disjoint_and_labelled_by_domain():
    corpus = domain_corpus()
    for d in DOMAINS:
        assert len(corpus.finetune[d]) == FINETUNE_PER_DOMAIN
        assert len(corpus.pretrain[d]) > 1000
        assert not set(corpus.finetune[d]) & set(corpus.pretrain[d])
    ds = load_domains8()
    assert len(ds) == len(DOMAINS) * FINETUNE_PER_DOMAIN
    assert ds.label_names == list(DOMAINS)
    assert [ds.label_names[y] for y in ds.labels] == list(ds.groups)
    assert load_domains8().texts == ds.texts  # deterministic


def test_usage_entropy_by_hand():
    assert usage_entropy(np.array([0, 1, 2, 3]), 4) == pytest.approx(1.0)
    assert usage_entropy(np.array([2, 2, 2]), 4) == pytest.approx(0.0)
    # half on one expert, half on another of 4: log 2 / log 4
    assert usage_entropy(np.array([0, 0, 1, 1]), 4) == pytest.approx(0.5)


def test_batches_are_a_pure_function_of_seed_and_step():
    p = PRESETS["test-tiny"]
    streams = [np.arange(100) + 1000 * d for d in range(8)]
    a, b = sample_batch(streams, p, 0, 5), sample_batch(streams, p, 0, 5)
    assert torch.equal(a, b) and a.shape == (p.batch_size, p.seq_len)
    assert not torch.equal(a, sample_batch(streams, p, 0, 6))
    assert not torch.equal(a, sample_batch(streams, p, 1, 5))
    rows = a.numpy()
    assert np.all(np.diff(rows, axis=1) == 1)  # contiguous windows of one domain's stream
    # only the preset's pretraining domains are drawn (the others are what fine-tuning learns)
    drawn = {DOMAINS[int(d)] for d in np.concatenate([sample_batch(streams, p, 0, s)[:, 0].numpy() // 1000
                                                      for s in range(20)])}
    assert drawn == set(p.domains) and len(drawn) < len(DOMAINS)


def test_lr_schedule_warmup_then_cosine_to_a_tenth():
    p = PRESETS["top2-16"]
    assert lr_at(p, 0) == pytest.approx(p.lr / p.warmup_steps)
    assert lr_at(p, p.warmup_steps - 1) == pytest.approx(p.lr)
    assert lr_at(p, p.warmup_steps) == pytest.approx(p.lr)
    assert lr_at(p, p.steps) == pytest.approx(0.1 * p.lr)
    mid = p.warmup_steps + (p.steps - p.warmup_steps) // 2
    assert lr_at(p, mid) == pytest.approx(0.55 * p.lr)


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_pretrain_is_deterministic_cached_and_resumes_bit_identically(tmp_path):
    straight = pretrain("test-tiny", 0, root=tmp_path / "a")
    assert straight == preset_dir("test-tiny", 0, tmp_path / "a")
    report = json.loads((straight / "pretrain.json").read_text())
    assert set(report["perplexity"]) == set(DOMAINS)  # measured on unseen domains too
    assert report["pretraining_domains"] == list(PRESETS["test-tiny"].domains)
    assert len(report["nmi_domain_expert"]) == PRESETS["test-tiny"].layers
    assert all(0 <= x <= 1 for x in report["nmi_domain_expert"] + report["usage_entropy"])
    assert report["perplexity_mean"] == pytest.approx(
        math.exp(np.mean([math.log(v) for v in report["perplexity"].values()])), rel=1e-3)
    # interrupted after 2 of 6 steps, then resumed: the same weights, bit for bit
    partial = pretrain("test-tiny", 0, root=tmp_path / "b", stop_after=2)
    assert (partial / "state.pt").is_file() and not (partial / "pretrain.json").exists()
    resumed = pretrain("test-tiny", 0, root=tmp_path / "b")
    wa, wb = _weights(straight), _weights(resumed)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not partial.exists()
    # cached: a second call returns at once without touching the files
    before = (straight / "model.safetensors").stat().st_mtime_ns
    assert pretrain("test-tiny", 0, root=tmp_path / "a") == straight
    assert (straight / "model.safetensors").stat().st_mtime_ns == before
    other_seed = pretrain("test-tiny", 1, root=tmp_path / "a")
    assert not torch.equal(_weights(other_seed)["model.embed_tokens.weight"], wa["model.embed_tokens.weight"])


def test_missing_preset_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HFEDMOE_CACHE", str(tmp_path))
    with pytest.raises(HFedMoEError, match="hfedmoe pretrain --preset switch-32"):
        pretrained_path("switch-32")


def test_config_must_match_the_preset():
    from hfedmoe.config import load_config

    with pytest.raises(HFedMoEError, match=r"model.num_experts: expected 16 \(the experts of model.preset"):
        load_config(None, ["model.name=scratch-moe", "model.preset=top2-16", "model.task=causal-lm",
                           "data.dataset=domains8", "model.num_experts=8"])
    with pytest.raises(HFedMoEError, match="model.preset: expected one of"):
        load_config(None, ["model.name=scratch-moe", "model.preset=big"])


@pytest.mark.parametrize("task", ["causal-lm", "classification"])
def test_a_federated_run_on_the_pretrained_moe(tmp_path, monkeypatch, task):
    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation

    monkeypatch.setenv("HFEDMOE_CACHE", str(tmp_path / "cache"))
    pretrain("test-tiny", 0)
    sets = ["model.name=scratch-moe", "model.preset=test-tiny", f"model.task={task}", "model.num_experts=4",
            "model.top_k=2", "data.dataset=domains8", "data.max_examples=400", "data.max_length=24",
            "train.local_steps=1", "train.batch_size=4", "federation.rounds=1", "clients.fixed_budgets=[1]",
            "data.partition=" + ("natural" if task == "causal-lm" else "dirichlet"), "data.num_clients=3"]
    cfg = load_config(None, sets + ["train.trainable=" + ('["experts"]' if task == "causal-lm" else '["experts", "head"]')])
    sim = Simulation(cfg, tmp_path / "run")
    sim.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    key = "test_perplexity" if task == "causal-lm" else "test_accuracy"
    assert rows[-1][key] is not None
    assert len(sim.fed.clients) == (8 if task == "causal-lm" else 3)
