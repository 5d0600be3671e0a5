"""Per-expert LoRA slices of PEFT's fused-expert adapters, and their product aggregation."""

from __future__ import annotations

import copy

import pytest
import torch

from hfedmoe.moe.build import tiny_model
from hfedmoe.moe.lora import aggregate_expert_lora, expert_delta, get_expert_lora, set_expert_lora


def _peft_mixtral(r=3):
    from peft import LoraConfig, get_peft_model

    base = tiny_model("mixtral")  # 5 experts, hidden 36, intermediate 20
    ref = copy.deepcopy(base)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=[],
                     target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(0)
    wrappers = [m for m in model.modules() if type(m).__name__ == "ParamWrapper"]
    with torch.no_grad():
        for w in wrappers:
            for lin in (w.lora_A["default"], w.lora_B["default"]):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.1)
    return model, ref, wrappers


def test_converter_matches_peft_delta_and_forward():
    model, ref, wrappers = _peft_mixtral()
    assert len(wrappers) == 4  # 2 layers x (gate_up_proj, down_proj)
    ids = torch.randint(3, 99, (2, 7))
    for w in wrappers:
        a, b = w.lora_A["default"].weight, w.lora_B["default"].weight
        peft_delta = w.get_delta_weight("default")  # (E, d0, d1)
        for e in range(w.num_experts):
            ours = expert_delta(a, b, w.num_experts, e, w.scaling["default"], w._did_swap_in_out_features)
            torch.testing.assert_close(ours, peft_delta[e], rtol=1e-5, atol=1e-6)
    # the merged weights W[e] + delta_e reproduce PEFT's forward
    names = {id(w): n for n, w in model.named_modules()}
    ref_params = dict(ref.named_parameters())
    with torch.no_grad():
        for w in wrappers:
            module_path = names[id(w)].removeprefix("base_model.model.").replace(".base_layer", "")
            param = ref_params[f"{module_path}.{w.parameter_name}"]
            for e in range(w.num_experts):
                param[e] += expert_delta(w.lora_A["default"].weight, w.lora_B["default"].weight, w.num_experts, e,
                                         w.scaling["default"], w._did_swap_in_out_features)
        torch.testing.assert_close(ref(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_set_expert_lora_writes_only_that_expert():
    a, b = torch.randn(5 * 3, 20), torch.randn(36, 5 * 3)
    a0, b0 = a.clone(), b.clone()
    new_a, new_b = torch.randn(3, 20), torch.randn(36, 3)
    set_expert_lora(a, b, 5, 2, new_a, new_b)
    got_a, got_b = get_expert_lora(a, b, 5, 2)
    assert torch.equal(got_a, new_a) and torch.equal(got_b, new_b)
    for e in (0, 1, 3, 4):
        assert all(torch.equal(x, y) for x, y in zip(get_expert_lora(a, b, 5, e), get_expert_lora(a0, b0, 5, e)))
    with pytest.raises(ValueError, match="expert slices"):
        set_expert_lora(a, b, 5, 0, new_a[:2], new_b)


def test_product_aggregation_is_exact_when_the_mean_fits_the_rank():
    gen = torch.Generator().manual_seed(1)
    r, out_dim, in_dim = 4, 12, 9
    # two clients whose updates have rank 2 each: the weighted mean has rank <= 4 = r
    clients = []
    for _ in range(2):
        a = torch.zeros(r, in_dim)
        b = torch.zeros(out_dim, r)
        a[:2] = torch.randn(2, in_dim, generator=gen)
        b[:, :2] = torch.randn(out_dim, 2, generator=gen)
        clients.append((a, b))
    weights = [3.0, 1.0]
    mean_product = 0.75 * clients[0][1] @ clients[0][0] + 0.25 * clients[1][1] @ clients[1][0]
    a_new, b_new = aggregate_expert_lora(clients, weights, r)
    assert a_new.shape == (r, in_dim) and b_new.shape == (out_dim, r)
    torch.testing.assert_close(b_new @ a_new, mean_product, rtol=1e-5, atol=1e-6)
    naive = (0.75 * clients[0][1] + 0.25 * clients[1][1]) @ (0.75 * clients[0][0] + 0.25 * clients[1][0])
    assert (naive - mean_product).norm() > 0.1 * mean_product.norm()  # averaging A and B is wrong


def test_product_aggregation_is_the_best_rank_r_approximation_otherwise():
    gen = torch.Generator().manual_seed(2)
    r = 2
    clients = [(torch.randn(r, 10, generator=gen), torch.randn(8, r, generator=gen)) for _ in range(3)]
    mean_product = sum(b @ a for a, b in clients) / 3  # rank up to 6 > r
    a_new, b_new = aggregate_expert_lora(clients, [1, 1, 1], r)
    s = torch.linalg.svdvals(mean_product.double())
    err = (b_new @ a_new - mean_product).norm().double()
    torch.testing.assert_close(err, s[r:].pow(2).sum().sqrt(), rtol=1e-5, atol=1e-6)  # Eckart-Young
    with pytest.raises(ValueError, match="weights"):
        aggregate_expert_lora(clients, [0, 0, 0], r)
