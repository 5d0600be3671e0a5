"""The LLM user's path end to end on tiny models: a local text corpus without labels (packed),
instruction data with the loss on responses only, reports in perplexity, exports that load with
the Auto classes in a fresh process and give the run's logits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
IDS = [[1, 400, 500, 600, 700, 800, 90, 12]]

FRESH = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
out = {}
for kind, path in json.loads(sys.argv[1]):
    if kind == "peft":
        from peft import AutoPeftModelForCausalLM as cls
    else:
        cls = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    with torch.no_grad():
        out[path] = cls.from_pretrained(path).eval()(input_ids=torch.tensor(json.loads(sys.argv[2]))).logits.tolist()
print(json.dumps(out))
"""


def _fresh_logits(pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Logits of each exported directory, loaded by transformers / PEFT alone in a new process."""
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", FRESH, json.dumps(pairs), json.dumps(IDS)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return {k: torch.tensor(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def _run_logits(run_dir: Path) -> torch.Tensor:
    from hfedmoe.cli.rundir import load_run, run_config

    run = load_run(run_dir, run_config(run_dir))
    with torch.no_grad():
        return run.model.eval()(input_ids=torch.tensor(IDS)).logits


def _corpus(path: Path) -> None:
    rng = np.random.default_rng(0)
    words = "the clinic nurse patient heart study trial vaccine flu care doctor report".split()
    rows = [{"body": " ".join(rng.choice(words, size=int(rng.integers(5, 60)))), "site": f"s{i % 3}"}
            for i in range(90)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(tmp_path: Path, preset: str, out: str, sets: list[str]) -> Path:
    from hfedmoe.cli.summary import write_report as _report
    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation

    cfg = load_config(REPO / "configs" / preset, sets)
    sim = Simulation(cfg, tmp_path / out)
    sim.run()
    _report(sim)
    return tmp_path / out


@pytest.mark.slow
def test_user_text_corpus_packed_reported_and_exported(tmp_path):
    from hfedmoe.cli.export import export_merged_run
    from hfedmoe.client.tasks import evaluate_lm
    from hfedmoe.federation.data import build_federation
    from hfedmoe.moe import wrap
    from transformers import AutoModelForCausalLM

    corpus = tmp_path / "corpus.jsonl"
    _corpus(corpus)
    sets = [f"data.path={corpus}", "data.text_column=body", "data.group_column=site", "data.partition=natural",
            "model.name=tiny-lm", "model.tiny_hidden=24", "model.tiny_layers=1", "data.max_length=32",
            "data.heldout_max_examples=4", "federation.rounds=1", "train.local_steps=2"]
    run = _run(tmp_path, "user-text.toml", "run", sets)
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # packing keeps every token; the summary has the LM fields, no accuracy artefacts
    assert summary["lm_tokens_kept_share"] == 1.0 and "documents -> " in summary["lm_layout"]
    assert summary["final_test_loss"] == rows[-1]["test_loss"] is not None
    assert summary["final_test_perplexity"] == pytest.approx(math.exp(rows[-1]["test_loss"]), rel=1e-9)
    assert summary["majority_rate"] is None
    assert (run / "perplexity_vs_round.png").is_file() and (run / "perplexity_vs_time.png").is_file()
    assert not (run / "accuracy_vs_round.png").exists()
    md = (run / "report.md").read_text()
    assert "100.0% of" in md and "majority" not in md
    # the merged export reloads in a fresh process with the run's logits and perplexity
    out, rnd = export_merged_run(run, tmp_path / "merged")
    assert rnd == 1 and "test perplexity" in (out / "README.md").read_text()
    fresh = _fresh_logits([("lm", str(out))])
    torch.testing.assert_close(fresh[str(out)], _run_logits(run), rtol=1e-5, atol=1e-5)
    from hfedmoe.config import load_config

    cfg = load_config(run / "config.toml")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    from transformers import AutoTokenizer

    fed = build_federation(cfg, AutoTokenizer.from_pretrained(str(out)))
    ppl = evaluate_lm(wrap(model), fed.tokens, fed.test_idx, cfg.train.eval_batch_size)["perplexity"]
    assert ppl == pytest.approx(rows[-1]["test_perplexity"], rel=1e-5)
    # generate: an empty prompt is the bos token alone, as training sequences start
    from hfedmoe.cli.generate import prompt_ids, stream_generate

    assert prompt_ids(fed_tok := AutoTokenizer.from_pretrained(str(out)), "").tolist() == [[fed_tok.bos_token_id]]
    assert isinstance(stream_generate(model, fed_tok, "", 3, 0.0, 0), str)


def test_instruction_pairs_train_on_responses_only(tmp_path):
    from hfedmoe.config import load_config
    from hfedmoe.data.batches import collate
    from hfedmoe.federation.data import build_federation
    from hfedmoe.federation.model import build_model

    data = tmp_path / "pairs.csv"
    data.write_text("question,answer\n" + "".join(f"what is {i}?,it is {i}.\n" for i in range(40)))
    cfg = load_config(REPO / "configs" / "user-text.toml", [
        f"data.path={data}", "data.prompt_column=question", "data.response_column=answer", "model.name=tiny-lm",
        "data.heldout=", "data.layout=truncate"])
    _, tok, _ = build_model(cfg.model, 1, 0)
    fed = build_federation(cfg, tok)
    batch = collate(fed.tokens, fed.test_idx[:1])
    targets = batch["labels"][0][batch["labels"][0] != -100].tolist()
    # the targets are exactly the template's assistant turn: the answer and the end-of-turn marker
    import re

    answer = re.fullmatch(r"it is (\d+)\.<\|im_end\|>\n", tok.decode(targets))
    assert answer is not None
    context = batch["input_ids"][0][batch["labels"][0] == -100].tolist()
    assert f"user\nwhat is {answer.group(1)}?<|im_end|>\n<|im_start|>assistant\n" in tok.decode(context)


@pytest.mark.slow
def test_lora_run_exports_load_with_auto_classes_offline(tmp_path):
    from hfedmoe.cli.export import export_merged_run, export_peft_run

    run = _run(tmp_path, "tiny-lm.toml", "lora", ["federation.rounds=1", "data.max_examples=120", "model.lora_r=4",
                                                 "model.tiny_layers=1", "data.heldout_max_examples=4"])
    peft_dir, _ = export_peft_run(run, tmp_path / "adapter")
    merged_dir, _ = export_merged_run(run, tmp_path / "merged")
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and Path(config["base_model_name_or_path"]).is_dir()
    fresh = _fresh_logits([("peft", str(peft_dir)), ("lm", str(merged_dir))])
    expected = _run_logits(run)
    torch.testing.assert_close(fresh[str(peft_dir)], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fresh[str(merged_dir)], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_moefied_bert_merges_back_to_a_dense_bert(tmp_path):
    from hfedmoe.cli.export import export_merged_run
    from hfedmoe.errors import HFedMoEError

    base = ["federation.rounds=1", "data.max_examples=200", "train.local_steps=2"]
    exact = _run(tmp_path, "tiny.toml", "all", base + ["model.top_k=4", "model.num_experts=4"])
    out, _ = export_merged_run(exact, tmp_path / "dense")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    fresh = _fresh_logits([("cls", str(out))])
    torch.testing.assert_close(fresh[str(out)], _run_logits(exact), rtol=1e-5, atol=1e-5)
    routed = _run(tmp_path, "tiny.toml", "routed", base + ["model.top_k=2", "model.num_experts=4"])
    with pytest.raises(HFedMoEError, match="--merged: expected model.top_k = model.num_experts .*--all-experts"):
        export_merged_run(routed, tmp_path / "refused")
    out, _ = export_merged_run(routed, tmp_path / "dense2", all_experts=True)
    info = json.loads((out / "hfedmoe_export.json").read_text())
    assert 0.0 <= info["routed_test_accuracy"] <= 1.0 and "every expert active" in (out / "README.md").read_text()


def test_generate_and_export_check_their_options_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from hfedmoe.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["generate", "--run", str(tmp_path / "nowhere"), "--prompt", "", "--max-new-tokens", "0"])
    assert res.exit_code == 2 and "--max-new-tokens: expected an integer >= 1, got 0" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["export", "--run", str(tmp_path)])
    assert res.exit_code == 2 and "--peft / --merged: expected at least one output directory" in res.output
