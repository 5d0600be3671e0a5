"""FFT-MoE against hand computations: the balance loss, the personalised activation within the
budget, data-size averaging over every client; config errors of the adapter fields."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hfedmoe.client import ClientUpdate
from hfedmoe.config import config_from_dict, validate
from hfedmoe.core.balance import balance_loss
from hfedmoe.errors import HFedMoEError
from hfedmoe.methods import make_method
from hfedmoe.methods.base import ClientInfo
from hfedmoe.methods.fftmoe import FFTMoE, aux_loss_fn
from hfedmoe.moe import wrap
from hfedmoe.moe.sparse_adapter import add_moe_adapters


def test_balance_loss_hand_case():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0],
                          [0.1, 0.6, 0.3, 0.0],
                          [0.25, 0.25, 0.25, 0.25]])  # token 2 is padding
    topk = torch.tensor([[0, 1], [1, 2], [3, 2]])
    mask = torch.tensor([True, True, False])
    # real slots: 0, 1, 1, 2 -> f = (1/4, 2/4, 1/4, 0); P = (0.3, 0.45, 0.25, 0)
    # all experts: 4 * (0.075 + 0.225 + 0.0625) = 1.45
    assert float(balance_loss(probs, topk, mask)) == pytest.approx(1.45)
    # active {0, 1, 2}: 3 * 0.3625 = 1.0875
    active = torch.tensor([True, True, True, False])
    assert float(balance_loss(probs, topk, mask, active)) == pytest.approx(1.0875)
    # uniform routing over A gives exactly 1
    uni = torch.full((4, 2), 0.5)
    assert float(balance_loss(uni, torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]]), torch.ones(4, dtype=torch.bool),
                              torch.tensor([True, True]))) == pytest.approx(1.0)
    # gradient d/dP_e = |A| f_e on active experts, 0 elsewhere (f carries no gradient)
    p = probs.clone().requires_grad_(True)
    balance_loss(p, topk, mask, active).backward()
    expected_row = torch.tensor([3 * 0.25, 3 * 0.5, 3 * 0.25, 0.0]) / 2  # mean over the 2 real tokens
    torch.testing.assert_close(p.grad, torch.stack([expected_row, expected_row, torch.zeros(4)]))
    assert float(balance_loss(probs, topk, torch.zeros(3, dtype=torch.bool))) == 0.0


def tiny_adapted(num_experts=4, top_k=2):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=12, intermediate_size=20, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg)
    add_moe_adapters(model, num_experts, top_k, 3, seed=0)
    return wrap(model)


def test_personalised_activation_within_the_budget():
    mm = tiny_adapted()
    method = FFTMoE(aux_weight=0.5)
    usage = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.3, 0.3, 0.1, 0.3]])  # (L, E)
    for budget, held, trained in [(1, [[1, 2], [0, 1]], [[1], [0]]),  # held = max(budget, top_k) = 2
                                  (3, [[1, 2, 3], [0, 1, 3]], [[1, 2, 3], [0, 1, 3]]),
                                  (9, [[0, 1, 2, 3]] * 2, [[0, 1, 2, 3]] * 2)]:
        for round_idx in range(1, 6):  # no random exploration: the same answer every round
            plan = method.plan(mm, ClientInfo(3, budget, 10, "phone-flagship"), round_idx).profile(usage, usage)
            assert plan.restrict == held and plan.static_subsets == trained
            assert plan.aux_loss is not None
    plan = FFTMoE(aux_weight=0.0).plan(mm, ClientInfo(3, 1, 10, "x"), 1).profile(usage, usage)
    assert plan.aux_loss is None


def test_aux_loss_reaches_the_adapter_routers():
    mm = tiny_adapted()
    ids = torch.randint(0, 50, (2, 5))
    aux = aux_loss_fn([[0, 1, 2], [1, 3]], mm.num_experts, weight=0.5)
    with mm.restrict_routing([[0, 1, 2], [1, 3]]), mm.capture_routing(live=True) as cap:
        mm.model(input_ids=ids)
    value = aux(cap)
    expected = 0.5 * torch.stack([
        balance_loss(cap.live_probs[0], cap.topk_idx[0], cap.token_mask[0], torch.tensor([1, 1, 1, 0]).bool()),
        balance_loss(cap.live_probs[1], cap.topk_idx[1], cap.token_mask[1], torch.tensor([0, 1, 0, 1]).bool()),
    ]).mean()
    assert float(value.detach()) == pytest.approx(float(expected.detach()))
    value.backward()
    assert mm.router_weight(1).grad is not None and mm.router_weight(1).grad.abs().sum() > 0


def _update(cid, n, experts, routers, L=2, E=4):
    trained = torch.zeros(L, E, dtype=torch.bool)
    for layer, e in experts:
        trained[layer, e] = True
    return ClientUpdate(cid, n, experts, routers, {}, torch.full((L, E), 0.25), torch.zeros(L, E), trained,
                        trained.long(), {})


def test_aggregation_averages_every_client_by_data_size():
    mm = tiny_adapted()
    g = [mm.get_experts(layer) for layer in range(2)]
    g_router = [mm.router_state(layer) for layer in range(2)]

    def expert(v):
        return {n: torch.full_like(t[0], v) for n, t in g[0].items()}

    a = _update(0, 1, {(0, 1): expert(1.0)}, {l: {"weight": torch.full_like(g_router[l]["weight"], 2.0)} for l in (0, 1)})
    b = _update(1, 3, {(0, 1): expert(5.0), (1, 2): expert(-1.0)},
                {l: {"weight": torch.full_like(g_router[l]["weight"], 6.0)} for l in (0, 1)})
    FFTMoE().aggregate(mm, [a, b], 1)
    new = [mm.get_experts(layer) for layer in range(2)]
    for name in g[0]:
        torch.testing.assert_close(new[0][name][1], torch.full_like(g[0][name][1], (1 * 1.0 + 3 * 5.0) / 4))
        # client a did not train expert (1, 2): it counts with the global value it received
        torch.testing.assert_close(new[1][name][2], (1 * g[1][name][2] + 3 * -1.0) / 4)
        assert torch.equal(new[0][name][0], g[0][name][0])  # nobody trained it: unchanged bit for bit
    torch.testing.assert_close(mm.router_state(0)["weight"], torch.full_like(g_router[0]["weight"], 5.0))


def test_fft_moe_is_registered_with_its_aux_weight():
    cfg = config_from_dict({"method": {"name": "fft-moe", "aux_weight": 0.25}})
    method = make_method(cfg.method)
    assert isinstance(method, FFTMoE) and method.aux_weight == 0.25 and method.name == "fft-moe"


@pytest.mark.parametrize("data, field", [
    ({"model": {"name": "tiny-moe", "adapter": "moe"}}, "model.adapter: expected 'none' for model.name = 'tiny-moe'"),
    ({"model": {"name": "tiny-lm", "task": "causal-lm", "adapter": "moe"}}, "model.adapter: expected 'none'"),
    ({"model": {"name": "tiny-bert"}}, "model.adapter: expected 'moe' for the dense model.name = 'tiny-bert'"),
    ({"model": {"name": "tiny-bert", "adapter": "moe", "adapter_rank": 0}}, "model.adapter_rank: expected"),
    ({"model": {"name": "tiny-bert", "adapter": "moe", "adapter_layers": [1, 1]}}, "model.adapter_layers: expected"),
    ({"model": {"name": "tiny-bert", "adapter": "moe", "lora_r": 4}}, "model.lora_r: expected 0 with model.adapter"),
    ({"model": {"name": "tiny-bert", "adapter": "moe"}, "train": {"trainable": ["head"]}}, "train.trainable: expected"),
    ({"model": {"name": "tiny-bert", "adapter": "lora"}}, "model.adapter: expected one of none | moe"),
    ({"method": {"aux_weight": -1.0}}, "method.aux_weight"),
])
def test_adapter_config_errors_name_the_field(data, field):
    with pytest.raises(HFedMoEError) as err:
        validate(config_from_dict(data))
    assert field in str(err.value) and "\n" not in str(err.value)


def test_dense_models_with_adapters_validate():
    for name, task in [("tiny-bert", "classification"), ("minilm", "classification"),
                       ("tiny-llama", "causal-lm"), ("smollm2", "causal-lm")]:
        validate(config_from_dict({"model": {"name": name, "task": task, "adapter": "moe"},
                                   "data": {"dataset": "vader"}}))
