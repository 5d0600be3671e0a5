"""LoRA experts wired end to end: the adapter's per-expert LoRA slices (training a budget leaves the
others bit-identical), product/SVD aggregation through the methods' expert parts, PEFT export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfedmoe.client import ClientUpdate
from hfedmoe.config import load_config
from hfedmoe.errors import HFedMoEError, UnsupportedModelError
from hfedmoe.methods.aggregation import SparseExperts, UniformExperts
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model
from hfedmoe.moe.lora import ProductMean
from hfedmoe.moe.lora_export import export_peft
from hfedmoe.moe.lora_model import enable_lora

ALL_PARTS = ["experts", "routers", "head", "attention", "embeddings", "norms"]


def _lora(family="mixtral", r=2, seed=0, **overrides):
    model = tiny_model(family, **overrides)
    lm = enable_lora(wrap(model), r, 2.0 * r)
    gen = torch.Generator().manual_seed(seed)
    for layer in range(lm.num_layers):  # non-zero B: the adapter changes the function
        for e in range(lm.num_experts):
            lm.set_expert(layer, e, {k: torch.randn(v.shape, generator=gen) * 0.1
                                     for k, v in lm.get_expert(layer, e).items()})
    return model, lm


def test_expert_tensors_are_the_lora_slices_and_the_train_forward_equals_peft():
    model, lm = _lora()
    assert lm.expert_param_names(0) == ["gate_up_proj.lora_A", "gate_up_proj.lora_B", "down_proj.lora_A",
                                        "down_proj.lora_B"]
    shapes = {k: tuple(v.shape) for k, v in lm.get_expert(1, 3).items()}
    # tiny Mixtral: hidden 36, intermediate 20 -> gate_up (2*20, 36), down (36, 20); r = 2
    assert shapes == {"gate_up_proj.lora_A": (2, 36), "gate_up_proj.lora_B": (40, 2),
                      "down_proj.lora_A": (2, 20), "down_proj.lora_B": (36, 2)}
    assert lm.lora_numel() == 2 * (36 + 40) + 2 * (20 + 36)
    # keys of the expert storage are PEFT's lora weights; dense parameters hold none of them
    assert all("lora_" in k for k in lm.expert_state_keys()) and len(lm.expert_state_keys()) == 8
    assert not [n for n in lm.dense_named_parameters() if "lora_" in n or "experts" in n]
    ids = torch.randint(3, 99, (2, 7))
    base_out = tiny_model("mixtral")(input_ids=ids).logits
    peft_out = model(input_ids=ids).logits  # PEFT's own forward (W + s B A for every expert)
    with lm.train_only([None] * lm.num_layers):
        ours = model(input_ids=ids).logits  # the adapter's loop with W_e + s B_e A_e per expert
    assert (peft_out - base_out).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(ours, peft_out, rtol=1e-5, atol=1e-6)


def test_training_a_budget_changes_only_the_selected_experts_slices():
    model, lm = _lora()
    base_before = {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" not in n}
    leaves = lm.expert_leaves()
    before = {k: [t.clone() for t in v] for k, v in leaves.items()}
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([t for v in leaves.values() for t in v], lr=1e-2, weight_decay=0.01)
    ids = torch.randint(3, 99, (4, 9))
    model.train()
    subsets = [[0, 2], [4]]
    for _ in range(2):
        with lm.train_only(subsets):
            model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for (layer, e), now in lm.expert_leaves().items():
        same = all(torch.equal(a, b) for a, b in zip(before[(layer, e)], now))
        assert same == (e not in subsets[layer]), (layer, e)
    after = model.state_dict()
    assert all(torch.equal(t, after[n]) for n, t in base_before.items())  # base weights frozen


def test_per_expert_module_layouts_are_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="'switch'.*lora_r = 0"):
        enable_lora(wrap(tiny_model("switch")), 2, 4.0)


def _update(cid, n, experts, lm, trained_usage):
    L, E = lm.num_layers, lm.num_experts
    trained = torch.zeros(L, E, dtype=torch.bool)
    usage = torch.zeros(L, E)
    for (layer, e), u in trained_usage.items():
        trained[layer, e] = True
        usage[layer, e] = u
    return ClientUpdate(client_id=cid, num_examples=n, experts=experts, routers={}, dense={}, usage=usage,
                        importance=torch.zeros(L, E), trained=trained,
                        selected_counts=trained.long(), metrics={})


def _rank1(gen, names, r):
    """A client's slices whose products have rank 1 (only the first rank row / column used)."""
    out = {}
    for n, t in names.items():
        x = torch.zeros(t.shape)
        if n.endswith("lora_A"):
            x[0] = torch.randn(t.shape[1], generator=gen)
        else:
            x[:, 0] = torch.randn(t.shape[0], generator=gen)
        out[n] = x
    return out


def test_sparse_aggregation_is_the_weighted_product_mean_over_the_clients_that_trained_the_expert():
    _, lm = _lora(r=2)
    gen = torch.Generator().manual_seed(3)
    shapes = lm.get_expert(0, 1)
    g = {k: lm.get_expert(l, e) for l in range(2) for e in range(5) for k in [(l, e)]}
    c1 = {(0, 1): _rank1(gen, shapes, 2), (1, 4): _rank1(gen, shapes, 2)}
    c2 = {(0, 1): _rank1(gen, shapes, 2), (0, 2): _rank1(gen, shapes, 2)}
    tau = 0.1
    agg = SparseExperts(lm, tau=tau)
    agg.add(_update(1, 30, c1, lm, {(0, 1): 0.5, (1, 4): 0.5}))
    agg.add(_update(2, 10, c2, lm, {(0, 1): 0.5, (0, 2): 0.05}))  # (0, 2): usage below tau
    agg.finish(lm)
    new = lm.get_expert(0, 1)
    for pair in ("gate_up_proj", "down_proj"):
        a1, b1 = (c1[(0, 1)][f"{pair}.lora_{x}"].numpy().astype(np.float64) for x in "AB")
        a2, b2 = (c2[(0, 1)][f"{pair}.lora_{x}"].numpy().astype(np.float64) for x in "AB")
        expected = (30 * b1 @ a1 + 10 * b2 @ a2) / 40  # rank 2 = r: exactly representable
        got = new[f"{pair}.lora_B"].double().numpy() @ new[f"{pair}.lora_A"].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        naive = ((30 * b1 + 10 * b2) / 40) @ ((30 * a1 + 10 * a2) / 40)
        assert np.abs(naive - expected).max() > 0.05 * np.abs(expected).max()
    # one client alone: its own factors, bit for bit
    assert all(torch.equal(lm.get_expert(1, 4)[k], c1[(1, 4)][k]) for k in shapes)
    # gated out by usage, or trained by nobody: unchanged
    for key in [(0, 2), (0, 0), (1, 0), (1, 3)]:
        assert all(torch.equal(lm.get_expert(*key)[k], g[key][k]) for k in shapes), key


def test_uniform_aggregation_counts_the_other_clients_with_the_global_product():
    _, lm = _lora(r=3)
    gen = torch.Generator().manual_seed(4)
    shapes = lm.get_expert(0, 0)
    lm.set_expert(0, 0, _rank1(gen, shapes, 3))
    glob = lm.get_expert(0, 0)
    c1 = {(0, 0): _rank1(gen, shapes, 3)}
    agg = UniformExperts(lm)
    agg.add(_update(1, 10, c1, lm, {(0, 0): 1.0}))
    agg.add(_update(2, 30, {}, lm, {}))
    agg.finish(lm)
    new = lm.get_expert(0, 0)
    for pair in ("gate_up_proj", "down_proj"):
        p1 = c1[(0, 0)][f"{pair}.lora_B"].double() @ c1[(0, 0)][f"{pair}.lora_A"].double()
        pg = glob[f"{pair}.lora_B"].double() @ glob[f"{pair}.lora_A"].double()
        expected = 0.25 * p1 + 0.75 * pg  # rank 2 <= r
        torch.testing.assert_close(new[f"{pair}.lora_B"].double() @ new[f"{pair}.lora_A"].double(), expected,
                                   rtol=1e-5, atol=1e-6)


def test_product_mean_keeps_a_single_clients_factors_and_rejects_empty():
    a, b = torch.randn(2, 5), torch.randn(4, 2)
    acc = ProductMean()
    acc.add(a, b, 3.0)
    got = acc.result(2)
    assert torch.equal(got[0], a) and torch.equal(got[1], b)
    with pytest.raises(ValueError, match="no client"):
        ProductMean().result(2)


@pytest.mark.parametrize("tie", [False, True])
def test_export_loads_with_peft_from_pretrained_and_reproduces_the_model(tmp_path, tie):
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file

    model, lm = _lora(tie_word_embeddings=tie)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # routers and every dense part trained too
        for p in lm.router_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        for p in lm.dense_named_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    out = export_peft(lm, tmp_path / "adapter", ALL_PARTS)
    ids = torch.randint(3, 99, (2, 7))
    ref = model(input_ids=ids).logits
    base = tiny_model("mixtral", tie_word_embeddings=tie)
    assert (base(input_ids=ids).logits - ref).abs().max() > 0.1
    loaded = PeftModel.from_pretrained(base, out)
    torch.testing.assert_close(loaded(input_ids=ids).logits, ref, rtol=0, atol=0)
    # the keys are the ones PEFT itself writes for the same target_parameters / modules_to_save
    import json

    cfg = json.loads((out / "adapter_config.json").read_text())
    ref_model = get_peft_model(tiny_model("mixtral", tie_word_embeddings=tie), LoraConfig(
        r=2, lora_alpha=4, target_modules=[], target_parameters=cfg["target_parameters"],
        modules_to_save=cfg["modules_to_save"]))
    ref_model.save_pretrained(tmp_path / "peft_own")
    assert set(load_file(out / "adapter_model.safetensors")) == set(
        load_file(tmp_path / "peft_own" / "adapter_model.safetensors"))


def test_config_lora_fields_are_validated():
    from hfedmoe.config.loading import config_from_data as config_from_dict

    with pytest.raises(HFedMoEError, match="model.lora_r: expected an integer in \\[0, 4096\\], got -1"):
        config_from_dict({"model": {"lora_r": -1}})
    with pytest.raises(HFedMoEError, match="model.lora_alpha"):
        config_from_dict({"model": {"lora_r": 4, "lora_alpha": 0.0}})
    with pytest.raises(HFedMoEError, match="train.trainable: expected a list with 'experts' when model.lora_r > 0"):
        config_from_dict({"model": {"lora_r": 4}, "train": {"trainable": ["routers"]}})
    assert config_from_dict({"model": {"lora_r": 4}}).model.lora_alpha == 16.0


def test_load_config_accepts_the_lora_overrides(tmp_path):
    from tests.unit.test_causal_lm import REPO

    cfg = load_config(REPO / "configs" / "tiny-lm.toml", ["model.lora_r=4", "model.lora_alpha=8"])
    assert (cfg.model.lora_r, cfg.model.lora_alpha) == (4, 8.0)
