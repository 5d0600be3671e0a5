"""Sequence pooling (the default reading of Eqs. 3-5 and 14) on every path that scores experts,
against numpy by hand: per-layer selection inside the forward, the model-scope pre-pass, restrict
mode, and the importance a client uploads (s^c, which alpha uses); plus the normalised IB term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hfedmoe.client import TrainSettings, train_client
from hfedmoe.core.importance import ib_scores
from hfedmoe.data.batches import TokenizedTexts, iter_batches
from hfedmoe.methods import ClientInfo, HFedMoE
from hfedmoe.methods.restrict import HFedMoERestrict
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model

LAM, BETA, SEED = 0.3, 0.7, 5


def np_sequence_scores(probs, mask, seq_len, lam, beta, routed=None):
    """(s_b, I_b) by hand: mean of each sequence's real tokens, then Eqs. 3-5 and 14 over sequences;
    ``routed`` given: the KL term rescaled by std(s_b)/std(KL) over the routed experts."""
    samples = []
    for start in range(0, len(mask), seq_len):
        rows = [probs[t] for t in range(start, start + seq_len) if mask[t]]
        if rows:
            samples.append(np.mean(rows, axis=0))
    samples = np.array(samples)  # (B, E)
    num_experts = probs.shape[1]
    s_b, kl = np.zeros(num_experts), np.zeros(num_experts)
    for e in range(num_experts):
        col = samples[:, e]
        p = col.mean()
        s_b[e] = lam * p + (1 - lam) * col.max()
        kl[e] = max(sum(g * math.log(g / p) for g in col if g > 0) / len(col), 0.0)
    factor = 1.0
    if routed is not None:
        factor = s_b[routed].std() / kl[routed].std() if routed.sum() > 1 and kl[routed].std() > 0 else 0.0
    return s_b, s_b - beta * factor * kl


def _data():
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 99, (n,), generator=gen).tolist() for n in (5, 9, 3, 7, 8, 4)]
    return TokenizedTexts(rows, np.zeros(6, dtype=np.int64), pad_id=0, prompt_lengths=[1] * 6)


def _expected(mm, data, settings, restrict=None, routed_scale=False):
    """Per layer (s_b, I_b, routed) of the first training batch at the current weights, by numpy."""
    batch = next(iter_batches(data, np.arange(6), settings.batch_size, shuffle=True, rng=np.random.default_rng(SEED)))
    mask = batch["attention_mask"]  # (B, S) with padding
    assert not bool(mask.all())
    with torch.no_grad(), mm.capture_routing(mask) as cap:
        if restrict is not None:
            with mm.restrict_routing(restrict):
                mm.model(input_ids=batch["input_ids"], attention_mask=mask)
        else:
            mm.model(input_ids=batch["input_ids"], attention_mask=mask)
    out = []
    for layer in range(mm.num_layers):
        r = cap.layer(layer)
        probs, real = r.gate_probs.double().numpy(), r.token_mask.numpy()
        routed = np.zeros(mm.num_experts, dtype=bool)
        routed[np.unique(r.topk_idx.numpy()[real])] = True
        s_b, i_b = np_sequence_scores(probs, real, mask.shape[1], LAM, BETA, routed if routed_scale else None)
        out.append((s_b, i_b, routed))
    return out


def _settings(**kw):
    return TrainSettings(local_steps=1, batch_size=4, lr=1e-2, trainable=("experts", "routers"), lam=LAM, beta=BETA,
                         **kw)


def _top(scores, routed, k):
    order = sorted((i for i in range(len(scores)) if routed[i]), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


@pytest.mark.parametrize("ib_scale", ["raw", "normalised"])
def test_in_forward_selection_and_upload_pool_per_sequence(ib_scale):
    mm, data = wrap(tiny_model("mixtral")), _data()
    settings = _settings()
    expected = _expected(mm, data, settings, routed_scale=ib_scale == "normalised")
    method = HFedMoE(lam=LAM, beta=BETA, ib_scale=ib_scale)  # pooling: "sequence" by default
    plan = method.plan(mm, ClientInfo(0, 1, 6, "x"), 1)
    upd = train_client(mm, 0, data, np.arange(6), plan, settings, seed=SEED)
    for layer, (s_b, i_b, routed) in enumerate(expected):
        np.testing.assert_allclose(upd.importance[layer].numpy(), s_b, rtol=1e-5, atol=1e-6)  # uploaded s^c
        assert upd.selected_counts[layer].nonzero().flatten().tolist() == _top(i_b, routed, 1)


def test_model_scope_pre_pass_pools_per_sequence():
    mm, data = wrap(tiny_model("mixtral")), _data()
    settings = _settings()
    expected = _expected(mm, data, settings)
    plan = HFedMoE(lam=LAM, beta=BETA, budget_scope="model").plan(mm, ClientInfo(0, 3, 6, "x"), 1)
    upd = train_client(mm, 0, data, np.arange(6), plan, settings, seed=SEED)
    flat = np.concatenate([i_b for _, i_b, _ in expected])
    routed = np.concatenate([r for _, _, r in expected])
    want = _top(flat, routed, 3)  # the 3 best (layer, expert) pairs over the model
    assert upd.selected_counts.flatten().nonzero().flatten().tolist() == want


def test_restrict_mode_pools_per_sequence_within_the_held_experts():
    mm, data = wrap(tiny_model("mixtral")), _data()
    settings = _settings()
    method = HFedMoERestrict(lam=LAM, beta=BETA)
    plan = method.plan(mm, ClientInfo(0, 2, 6, "x"), 1)
    expected = _expected(mm, data, settings, restrict=plan.restrict)
    upd = train_client(mm, 0, data, np.arange(6), plan, settings, seed=SEED)
    for layer, (s_b, i_b, routed) in enumerate(expected):
        held = plan.restrict[layer]
        np.testing.assert_allclose(upd.importance[layer].numpy(), s_b, rtol=1e-5, atol=1e-6)
        chosen = upd.selected_counts[layer].nonzero().flatten().tolist()
        assert chosen == _top(i_b, routed, 2) and set(chosen) <= set(held)


def test_token_ablation_uploads_token_scores():
    """pooling="token" (the hfedmoe-token ablation) keeps the per-token reading on the upload too."""
    mm, data = wrap(tiny_model("mixtral")), _data()
    plan = HFedMoE(lam=LAM, beta=BETA, pooling="token").plan(mm, ClientInfo(0, 1, 6, "x"), 1)
    assert plan.pooling == "token"
    seq = train_client(mm, 0, data, np.arange(6), HFedMoE(lam=LAM, beta=BETA).plan(mm, ClientInfo(0, 1, 6, "x"), 1),
                       _settings(), seed=SEED)
    mm2 = wrap(tiny_model("mixtral"))
    tok = train_client(mm2, 0, data, np.arange(6), plan, _settings(), seed=SEED)
    assert not torch.allclose(seq.importance, tok.importance)


def test_normalised_ib_term_by_hand():
    # s_b over 4 experts, KL by hand; candidates = experts 0, 1, 3 (expert 2 not routed)
    probs = torch.tensor([[0.7, 0.2, 0.0, 0.1], [0.1, 0.3, 0.0, 0.6], [0.4, 0.4, 0.0, 0.2]], dtype=torch.float64)
    mask = torch.ones(3, dtype=torch.bool)
    cand = torch.tensor([True, True, False, True])
    s_b, _ = np_sequence_scores(probs.numpy(), mask.numpy(), 1, 0.5, 0.0)
    _, i_raw = np_sequence_scores(probs.numpy(), mask.numpy(), 1, 0.5, 2.0)
    kl = (s_b - i_raw) / 2.0
    c = s_b[[0, 1, 3]].std() / kl[[0, 1, 3]].std()  # population std over the candidates
    got = ib_scores(probs, mask, 0.5, 2.0, ib_scale="normalised", candidates=cand)
    np.testing.assert_allclose(got.numpy(), s_b - 2.0 * c * kl, rtol=1e-12)
    # the rescaled term has exactly beta times the spread of s_b over the candidates
    assert np.std((s_b - got.numpy())[[0, 1, 3]]) == pytest.approx(2.0 * np.std(s_b[[0, 1, 3]]))
    # raw is Eq. 14 as written; beta = 0 is s_b in both scales; one candidate: no IB term
    np.testing.assert_allclose(ib_scores(probs, mask, 0.5, 2.0).numpy(), i_raw, rtol=1e-12)
    np.testing.assert_allclose(ib_scores(probs, mask, 0.5, 0.0, ib_scale="normalised").numpy(), s_b, rtol=1e-12)
    one = torch.tensor([True, False, False, False])
    np.testing.assert_allclose(ib_scores(probs, mask, 0.5, 2.0, ib_scale="normalised", candidates=one).numpy(), s_b)
    with pytest.raises(ValueError, match="ib_scale: expected one of 'raw', 'normalised', got 'log'"):
        ib_scores(probs, mask, 0.5, 1.0, ib_scale="log")


def test_switch_decoder_tokens_pool_by_the_batch_size_without_a_decoder_mask():
    """Switch: encoder tokens take S from attention_mask; decoder tokens (no decoder mask) are all
    real and belong to sequence t // (T / B). Scores equal numpy over those sequences."""
    from hfedmoe.moe.contexts import routing_ib_scores, routing_seq_ids

    mm = wrap(tiny_model("switch"))
    gen = torch.Generator().manual_seed(0)
    ids, dec = torch.randint(3, 99, (3, 6), generator=gen), torch.randint(3, 99, (3, 4), generator=gen)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad(), mm.capture_routing() as cap:
        mm.model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    for layer in range(mm.num_layers):
        r = cap.layer(layer)
        num_tokens = r.gate_probs.shape[0]
        seq_len = num_tokens // 3
        assert routing_seq_ids(r).tolist() == [t // seq_len for t in range(num_tokens)]
        _, i_b = np_sequence_scores(r.gate_probs.double().numpy(), r.token_mask.numpy(), seq_len, LAM, BETA)
        np.testing.assert_allclose(routing_ib_scores(r, LAM, BETA, "sequence").double().numpy(), i_b,
                                   rtol=1e-5, atol=1e-6)
