"""runtime.* (threads, device, dtype), attention dropout, client validation cadence, the
compute/communication split of the simulated time, and the cost model's FLOPs."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hfedmoe.config import load_config
from hfedmoe.core.flops import BatchShape
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.budgeting import cost_model
from hfedmoe.federation.runtime import resolve_device, set_attention_dropout

from .conftest import FAST, TINY


def test_bfloat16_run_checkpoints_and_resumes_bit_identically(tmp_path):
    sets = FAST + ["federation.rounds=2", "runtime.dtype=bfloat16", "runtime.device=cpu"]
    full = Simulation(load_config(TINY, sets), tmp_path / "full")
    # mixed precision: float32 master weights, the forward under bfloat16 autocast
    assert {p.dtype for p in full.mm.model.parameters()} == {torch.float32}
    full.run()
    half = Simulation(load_config(TINY, sets), tmp_path / "half")
    half.run(1)
    resumed = Simulation(load_config(TINY, sets), tmp_path / "half")
    assert resumed.restore() == 1
    resumed.run(2)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "round_2" / "model.safetensors"))
    b = load_file(str(tmp_path / "half" / "checkpoints" / "round_2" / "model.safetensors"))
    assert {t.dtype for t in a.values() if t.is_floating_point()} == {torch.float32}
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_updates_and_losses_match_float32(tmp_path, dtype):
    """Autocast over float32 master weights: two rounds of the tiny preset in ``dtype`` give the
    float32 run's loss curve within 3% per round, and its weight updates (global after - before)
    point the same way: cosine >= 0.9, relative L2 difference <= 0.5 (measured: 0.38 for bfloat16).
    Adam's first steps move each weight by about lr * sign(gradient), so weights whose gradient is
    near 0 flip sign under any rounding: an elementwise tolerance would test noise."""
    sets = FAST + ["federation.rounds=2", "runtime.device=cpu", "model.attention_dropout=0.0", "train.dropout=0.0"]
    runs = {}
    for name in ("float32", dtype):
        sim = Simulation(load_config(TINY, sets + [f"runtime.dtype={name}"]), tmp_path / name)
        before = {k: v.clone() for k, v in sim.mm.model.state_dict().items() if v.is_floating_point()}
        rows = sim.run()
        after = sim.mm.model.state_dict()
        delta = torch.cat([(after[k] - before[k]).flatten() for k in before])
        runs[name] = ([r["train_loss"] for r in rows[1:]], delta)
        assert all(p.dtype == torch.float32 for p in sim.mm.model.parameters())
    (loss32, d32), (loss16, d16) = runs["float32"], runs[dtype]
    assert loss16 == pytest.approx(loss32, rel=0.03)
    cosine = float(d16 @ d32 / (d16.norm() * d32.norm()))
    print(dtype, "loss", loss16, "vs", loss32, "update cosine", cosine, "rel", float((d16 - d32).norm() / d32.norm()))
    assert cosine >= 0.9 and float((d16 - d32).norm() / d32.norm()) <= 0.5


def test_bfloat16_small_learning_rate_updates_every_trained_weight():
    """The failure mode of bfloat16 *parameters*: at lr 1e-5 most AdamW updates round away (0.5%
    of the weights changed). With float32 master weights every trained weight moves."""
    from hfedmoe.client.train import TrainPlan, TrainSettings, train_client
    from hfedmoe.data.batches import TokenizedTexts
    from hfedmoe.moe import wrap
    from hfedmoe.moe.build import tiny_model

    mm = wrap(tiny_model("minilm_moe", seed=0))
    mm.model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(mm.model.forward)
    rng = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 90, (12,), generator=rng).tolist() for _ in range(8)]
    data = TokenizedTexts(input_ids=ids, labels=np.arange(8) % 2, pad_id=0)
    router = mm.router_parameters()[0]
    before = router.detach().clone()
    settings = TrainSettings(local_steps=1, batch_size=8, lr=1e-5, trainable=("experts", "routers", "head"),
                             dtype="bfloat16")
    train_client(mm, 0, data, np.arange(8), TrainPlan(static_subsets=[None] * mm.num_layers), settings, seed=0)
    changed = (router.detach() != before).float().mean()
    assert router.dtype == torch.float32 and float(changed) > 0.95


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error_and_auto_is_cpu():
    with pytest.raises(HFedMoEError, match=r"runtime.device: .*cuda"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_run_uses_the_configured_threads_and_restores_them(tmp_path, monkeypatch):
    seen = []
    sim = Simulation(load_config(TINY, FAST + ["federation.rounds=1", "runtime.threads=2"]), tmp_path / "t")
    original = sim.run_round
    monkeypatch.setattr(sim, "run_round", lambda r: seen.append(torch.get_num_threads()) or original(r))
    before = torch.get_num_threads()
    sim.run()
    assert seen == [2] and torch.get_num_threads() == before


def test_client_validation_every_n_rounds_and_at_the_end(tmp_path):
    sets = FAST + ["federation.rounds=3", "federation.client_eval_every=2"]
    rows = Simulation(load_config(TINY, sets), tmp_path / "e").run()
    has_val = [r["round"] for r in rows if "client_val_accuracy" in r]
    assert has_val == [0, 2, 3]
    assert all(r["test_accuracy"] is not None for r in rows)


def test_sim_time_is_compute_plus_communication(tmp_path):
    rows = Simulation(load_config(TINY, FAST + ["federation.rounds=2"]), tmp_path / "s").run()
    for r in rows[1:]:
        assert r["round_compute_time_s"] > 0 and r["round_comm_time_s"] > 0
        assert r["round_compute_time_s"] + r["round_comm_time_s"] == pytest.approx(r["round_sim_time_s"])
        assert r["sim_compute_time_s"] + r["sim_comm_time_s"] == pytest.approx(r["sim_time_s"])
        assert r["flops_per_client"] > r["backward_flops_per_client"] > 0


def test_attention_dropout_option(tmp_path):
    sim = Simulation(load_config(TINY, FAST + ["model.attention_dropout=0.0"]), tmp_path / "d")
    ps = [m.dropout.p for m in sim.mm.model.modules() if type(m).__name__.endswith("SelfAttention")]
    assert ps and all(p == 0.0 for p in ps)
    keep = Simulation(load_config(TINY, FAST), tmp_path / "k")
    assert set_attention_dropout(keep.mm.model, -1.0) == 0  # -1 leaves the checkpoint's value


def test_cost_model_step_flops_is_the_flop_model_on_an_expected_batch(tmp_path):
    cfg = load_config(TINY, FAST)
    sim = Simulation(cfg, tmp_path / "c")
    cost = cost_model(sim.mm, cfg)
    assert cost.flops is not None and cost.seq_len == cfg.data.max_length
    steps = [cost.step_flops(n) for n in range(sim.mm.num_experts + 1)]
    assert steps == sorted(steps) and steps[0] < steps[-1]  # more trained experts cost more
    shape = BatchShape(cfg.train.batch_size, cfg.data.max_length,
                       [cost.tokens_per_batch * cost.top_k] * cost.num_layers, [0] * cost.num_layers)
    fwd_only = cost.flops.forward(shape)
    assert steps[0] > fwd_only  # the dense part still trains (head, routers)


def test_evaluation_cadence_does_not_change_training(tmp_path):
    """Evaluation is read-only: evaluating every round or every other round gives the same model
    and the same accuracy at the rounds both evaluate (so a cheaper cadence is free)."""
    runs = {}
    for every in (1, 2):
        sim = Simulation(load_config(TINY, FAST + ["federation.rounds=2", f"federation.eval_every={every}"]),
                         tmp_path / f"e{every}")
        rows = sim.run()
        runs[every] = (rows, {k: v.clone() for k, v in sim.mm.model.state_dict().items()})
    (rows1, state1), (rows2, state2) = runs[1], runs[2]
    assert [r["test_accuracy"] is None for r in rows2] == [False, True, False]
    assert rows1[2]["test_accuracy"] == rows2[2]["test_accuracy"]
    assert rows1[2]["client_val_accuracy"] == rows2[2]["client_val_accuracy"]
    assert all(torch.equal(state1[k], state2[k]) for k in state1)


def test_hidden_dropout_option_leaves_attention_dropout_alone(tmp_path):
    sim = Simulation(load_config(TINY, FAST + ["train.dropout=0.0"]), tmp_path / "h")
    drops = {n: m.p for n, m in sim.mm.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    hidden = {n: p for n, p in drops.items() if "attention.self" not in n}
    attention = {n: p for n, p in drops.items() if "attention.self" in n}
    assert hidden and all(p == 0.0 for p in hidden.values())
    assert attention and all(p == 0.1 for p in attention.values())  # the checkpoint's, untouched
    assert sim.mm.model.config.hidden_dropout_prob == 0.0
