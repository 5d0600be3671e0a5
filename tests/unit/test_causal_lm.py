"""Causal-LM task: label masking, token-weighted perplexity, fine-grained upcycling, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hfedmoe.client.tasks import evaluate_lm
from hfedmoe.data.batches import TokenizedTexts, collate, tokenize_lm
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model, upcycle_llama

REPO = Path(__file__).resolve().parents[2]


def test_collate_masks_padding_and_prompt_tokens():
    data = TokenizedTexts([[1, 5, 6, 7, 8], [1, 9, 4]], np.zeros(2, dtype=np.int64), pad_id=0, prompt_lengths=[2, 1])
    batch = collate(data, [0, 1])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 8], [1, 9, 4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 8], [-100, 9, 4, -100, -100]]


class _Tok:
    """A character tokenizer with bos=1, eos=2, pad=0 (ids = ord(c) % 90 + 3)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) % 90 + 3 for c in t] for t in texts]}


def test_tokenize_lm_puts_bos_prompt_text_eos_and_truncates():
    tok = _Tok()
    data = tokenize_lm(tok, ["abc", "abcdefgh"], max_length=6, prompts=["X:", "Y:"])
    assert data.input_ids[0] == [1, ord("X") % 90 + 3, ord(":") % 90 + 3, *[ord(c) % 90 + 3 for c in "abc"]]
    assert len(data.input_ids[1]) == 6 and data.prompt_lengths == [3, 3]
    with pytest.raises(ValueError, match="data.prompt"):
        tokenize_lm(tok, ["a"], max_length=3, prompts=["long prompt"])


def test_evaluate_lm_is_the_mean_nll_over_predicted_tokens():
    mm = wrap(tiny_model("mixtral"))
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 99, (n,), generator=gen).tolist() for n in (5, 9, 3, 7)]
    data = TokenizedTexts(rows, np.zeros(4, dtype=np.int64), pad_id=0, prompt_lengths=[1, 3, 1, 2])
    nll, count = 0.0, 0
    with torch.no_grad():
        for r, p in zip(rows, data.prompt_lengths):  # one unpadded example at a time
            logits = mm.model(input_ids=torch.tensor([r])).logits[0]  # (S, V)
            targets = torch.tensor(r[1:])
            losses = F.cross_entropy(logits[:-1], targets, reduction="none")  # (S-1,)
            keep = torch.arange(1, len(r)) >= p  # position t predicted iff t >= prompt length
            nll += float(losses[keep].sum())
            count += int(keep.sum())
    for bs in (1, 3, 4):  # padding and batching must not change the token-weighted mean
        out = evaluate_lm(mm, data, np.arange(4), batch_size=bs)
        assert out["tokens"] == count
        assert out["loss"] == pytest.approx(nll / count, rel=1e-5)
        assert out["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg).eval()


def test_split_upcycling_equals_dense_with_all_experts_and_equal_router():
    dense = _tiny_llama()
    ids = torch.randint(3, 99, (2, 11))
    moe = upcycle_llama(dense, num_experts=4, top_k=4, split=True).eval()
    assert moe.model.layers[0].mlp.experts.gate_up_proj.shape == (4, 2 * 12, 32)
    with torch.no_grad():
        for layer in moe.model.layers:
            layer.mlp.gate.weight.zero_()  # equal router weights 1/4, down slices scaled by 4
        torch.testing.assert_close(moe(input_ids=ids).logits, dense(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    sparse = upcycle_llama(dense, num_experts=4, top_k=2, split=True).eval()
    adapter = wrap(sparse)
    assert (adapter.num_experts, adapter.top_k) == (4, 2)
    with pytest.raises(ValueError, match="divisible"):
        upcycle_llama(dense, num_experts=5, top_k=2, split=True)


def test_tiny_lm_run_end_to_end_lowers_perplexity(tmp_path):
    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation

    cfg = load_config(REPO / "configs" / "tiny-lm.toml", ["federation.rounds=2", "data.max_examples=200"])
    sim = Simulation(cfg, tmp_path)
    rows = sim.run()
    first, last = rows[0], rows[-1]
    assert first["test_accuracy"] is None and len(first["client_val_perplexity"]) == 16
    assert last["test_perplexity"] < first["test_perplexity"]
    assert math.isfinite(last["heldout_perplexity"])
    # the run report speaks of perplexity, not of an accuracy a causal LM does not have
    from hfedmoe.cli.summary import write_report as _report

    _report(sim)
    md = (tmp_path / "report.md").read_text()
    assert "test accuracy:" not in md and "per-client validation accuracy" not in md
    assert "| round | test ppl | held-out ppl |" in md
    assert f"| 2 | {last['test_perplexity']:.4g} |" in md
    assert "15: " in md.split("per client's validation split")[1]
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_test_loss"] == pytest.approx(math.log(last["test_perplexity"]), rel=1e-9)
    assert summary["majority_rate"] is None and "majority" not in md
    assert (tmp_path / "perplexity_vs_round.png").is_file() and not (tmp_path / "accuracy_vs_round.png").exists()
    # the run directory reloads into the same global model: same test perplexity, and it generates
    from hfedmoe.cli.generate import load_run_model, stream_generate
    from hfedmoe.federation.data import build_federation

    model, tok, rnd = load_run_model(tmp_path)
    assert rnd == 2
    fed = build_federation(cfg, tok)
    again = evaluate_lm(wrap(model), fed.tokens, fed.test_idx, cfg.train.eval_batch_size)
    assert again["perplexity"] == pytest.approx(last["test_perplexity"], rel=1e-5)
    text = stream_generate(model, tok, "nprhealth: ", max_new_tokens=5, temperature=0.0, seed=0)
    assert isinstance(text, str)
