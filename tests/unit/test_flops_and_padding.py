"""The one FLOP model against torch's FLOP counter; padding skips the experts without changing
real tokens' outputs; length-sorted evaluation; the importance scores are computed once per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hfedmoe.client.flops import flop_model
from hfedmoe.client.train import (
    TrainPlan,
    TrainSettings,
    evaluate,
    length_sorted,
    train_client,
)
from hfedmoe.core import importance
from hfedmoe.core.flops import BatchShape
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model

ALL_PARTS = ("experts", "routers", "head", "attention", "embeddings", "norms")


def _data(n: int = 24, seed: int = 0) -> TokenizedTexts:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(3, 99, size=int(rng.integers(3, 13))).tolist() for _ in range(n)]
    return TokenizedTexts(ids, rng.integers(0, 2, size=n).astype(np.int64), 0)


def _counted(mm, parts, plan, data, attn_impl="eager"):
    mm.model.config._attn_implementation = attn_impl
    s = TrainSettings(local_steps=2, batch_size=8, trainable=parts)
    with FlopCounterMode(display=False) as counter:
        upd = train_client(mm, 0, data, np.arange(16), plan, s, seed=0)
    return counter, upd.metrics["forward_flops"] + upd.metrics["backward_flops"]


@pytest.mark.parametrize("parts", [("experts", "routers", "head"), ALL_PARTS, ("head",)])
@pytest.mark.parametrize("budget", [1, 5])
def test_flop_model_matches_torch_flop_counter_within_5_percent(parts, budget):
    mm = wrap(tiny_model("minilm_moe", seed=0))
    plan = TrainPlan(static_subsets=[list(range(budget))] * mm.num_layers)
    counter, ours = _counted(mm, parts, plan, _data())
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_flop_model_with_a_fused_attention_kernel_plus_the_score_formula():
    """SDPA's fused CPU kernel is invisible to the counter: add the formula for the score matmuls."""
    mm = wrap(tiny_model("minilm_moe", seed=0))
    plan = TrainPlan(static_subsets=[[0, 1]] * mm.num_layers)
    data = _data()
    counter, ours = _counted(mm, ("experts", "routers", "head"), plan, data, attn_impl="sdpa")
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    seen = counter.get_total_flops()
    if not any("bmm" in op or "attention" in op for op in ops):  # the kernel was missed: add the formula
        fm = flop_model(mm, ("experts", "routers", "head"))
        rng = np.random.default_rng(0)  # the client's shuffle for seed 0
        order = np.arange(16)[rng.permutation(16)]
        for start in (0, 8):
            S = max(len(data.input_ids[i]) for i in order[start:start + 8])
            shape = BatchShape(8, S, [0] * mm.num_layers, [0] * mm.num_layers)
            # forward once per layer; backward 2x in every layer above the first (its input needs grad)
            seen += fm.score_flops(shape) * (mm.num_layers + 2 * (mm.num_layers - 1))
    assert ours == pytest.approx(seen, rel=0.05)


def test_frozen_attention_costs_no_weight_gradients():
    mm = wrap(tiny_model("minilm_moe", seed=0))
    shape = BatchShape(4, 10, [80] * mm.num_layers, [20] * mm.num_layers)
    frozen = flop_model(mm, ("experts", "routers", "head")).backward(shape)
    trained = flop_model(mm, ALL_PARTS).backward(shape)
    fm = flop_model(mm, ALL_PARTS)
    attn_weight_grads = mm.num_layers * 2 * shape.positions * fm.attention_params
    assert trained - frozen >= attn_weight_grads  # trainable attention adds at least its weight gradients
    head_only = BatchShape(4, 10, [80] * mm.num_layers, [0] * mm.num_layers)
    assert flop_model(mm, ("head",)).backward(head_only) == 2 * 4 * fm.head_params  # only the head's weights


@pytest.mark.parametrize("family", ["minilm_moe", "mixtral", "switch"])
def test_padding_skips_the_experts_and_real_outputs_are_unchanged(family):
    torch.manual_seed(0)
    mm = wrap(tiny_model(family, seed=0))
    mm.model.eval()
    B, S, pad = 3, 7, 4
    ids = torch.randint(3, 99, (B, S + pad))
    mask = torch.ones(B, S + pad, dtype=torch.long)
    mask[:, S:] = 0
    mask[0, S - 2:] = 0  # one shorter sequence
    batch = {"input_ids": ids, "attention_mask": mask}
    if family == "switch":
        batch.update(decoder_input_ids=ids[:, :5], decoder_attention_mask=torch.ones(B, 5, dtype=torch.long))

    def run(skip: bool):
        mm.skip_padding = skip
        with torch.no_grad(), mm.train_only([None] * mm.num_layers):
            return mm.model(**batch).logits

    skipped, full = run(True), run(False)
    if skipped.dim() == 2 or family == "switch":  # sequence classification: one row per sequence
        torch.testing.assert_close(skipped, full, rtol=1e-5, atol=1e-5)
    else:
        real = mask.bool()
        torch.testing.assert_close(skipped[real], full[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["minilm_moe", "mixtral"])
def test_padding_rows_never_reach_an_expert(family):
    mm = wrap(tiny_model(family, seed=0))
    ids = torch.randint(3, 99, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 4:] = 0  # 5 padding tokens
    rows = []  # rows entering an expert's activation (every implementation applies act_fn per row)
    hooks = [info.experts.act_fn.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
             for info in mm._layers]
    for skip in (False, True):
        mm.skip_padding = skip
        with torch.no_grad(), mm.train_only([None] * mm.num_layers):
            mm.model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    k, L = mm.top_k, mm.num_layers
    assert sum(rows) == (18 + 13) * k * L  # all 18 tokens without skipping, the 13 real ones with it


def test_length_sorted_evaluation_gives_the_same_accuracy_and_loss():
    mm = wrap(tiny_model("minilm_moe", seed=0))
    data = _data(40, seed=3)
    idx = np.arange(40)
    sorted_idx = length_sorted(data, idx)
    lengths = [len(data.input_ids[i]) for i in sorted_idx]
    assert lengths == sorted(lengths) and sorted(sorted_idx.tolist()) == idx.tolist()
    a = evaluate(mm, data, idx, batch_size=7)
    # reference: every example alone (no padding at all)
    mm.model.eval()
    correct, loss = 0, 0.0
    from hfedmoe.data.batches import collate

    with torch.no_grad():
        for i in idx:
            out = mm.model(**collate(data, [i]))
            correct += int(out.logits.argmax(-1).item() == data.labels[i])
            loss += float(out.loss)
    assert a["accuracy"] == correct / 40
    assert a["loss"] == pytest.approx(loss / 40, rel=1e-5)


def test_score_experts_runs_once_per_batch_and_layer(monkeypatch):
    from hfedmoe.methods import HFedMoE
    from hfedmoe.methods.base import ClientInfo

    mm = wrap(tiny_model("minilm_moe", seed=0))
    plan = HFedMoE().plan(mm, ClientInfo(0, 2, 16, "x"), 1)
    calls = []
    real = importance.masked_token_scores  # s_b on the training path (score_experts without host reads)
    monkeypatch.setattr(importance, "masked_token_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    train_client(mm, 0, _data(), np.arange(16), plan, TrainSettings(local_steps=2, batch_size=8), seed=0)
    assert len(calls) == 2 * mm.num_layers  # 2 batches; the selector's s_b is reused for the importance


def test_flop_count_includes_fedmoe_profiling_pass_and_the_oracles_full_backward():
    """Every method's compute by the one FLOP model: FedMoE's no-grad profiling pass is forward
    compute the client pays, and the oracle backpropagates through every routed expert to rank them
    by gradient norm; both match torch's counter within 5%."""
    mm = wrap(tiny_model("minilm_moe", seed=0))
    L = mm.num_layers
    parts = ("experts", "routers", "head")
    profiled = TrainPlan(profile=lambda usage, imp: TrainPlan(static_subsets=[[0]] * L), budget=1)
    counter, ours = _counted(mm, parts, profiled, _data())
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.05)
    _, without = _counted(mm, parts, TrainPlan(static_subsets=[[0]] * L), _data())
    assert ours > without * 1.2  # the profiling pass (4 batches forward) is a real share of the cost
    oracle = TrainPlan(grad_selector=lambda norms, routed: [[int(torch.argmax(n))] for n in norms], budget=1)
    counter, ours = _counted(mm, parts, oracle, _data())
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.05)
