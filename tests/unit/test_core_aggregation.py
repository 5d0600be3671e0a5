"""Eqs. 17-21 and FedAvg: hand cases, a loop-based numpy reference, invariants and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hfedmoe.core.aggregation import (
    aggregate_experts,
    aggregate_routers,
    aggregate_routers_by_data,
    aggregate_trained,
    expert_weights,
    fedavg,
    router_weights,
    routing_consistency,
)


def np_aggregate_experts(global_experts, client_experts, usage, trained, num_examples, tau):
    """Reference: for each expert, loop over clients and average the qualifying ones by |D_c|."""
    out = global_experts.copy()
    for e in range(global_experts.shape[0]):
        num, den = np.zeros_like(global_experts[e]), 0.0
        for c in range(client_experts.shape[0]):
            if usage[c, e] >= tau and trained[c, e] and num_examples[c] > 0:
                num = num + num_examples[c] * client_experts[c, e]
                den += num_examples[c]
        if den > 0:
            out[e] = num / den
    return out


def np_router(global_router, client_routers, usage, importance, tau, normalize):
    """Reference for Eqs. 18-21 written with python sets."""
    num_clients, num_experts = usage.shape
    s_c = [{e for e in range(num_experts) if usage[c, e] >= tau} for c in range(num_clients)]
    s_global = set().union(*s_c)
    if not s_global:
        return global_router.copy(), np.zeros(num_clients)
    alpha = np.array([sum(usage[c, e] * importance[c, e] for e in s_c[c]) / len(s_global) for c in range(num_clients)])
    if alpha.sum() == 0:
        return global_router.copy(), np.zeros(num_clients)
    if normalize:
        alpha = alpha / alpha.sum()
    return sum(alpha[c] * client_routers[c] for c in range(num_clients)), alpha


def B(x):  # noqa: N802
    return torch.tensor(x, dtype=torch.bool)


def D(x):  # noqa: N802
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------- experts, hand cases


def test_aggregate_experts_hand_case():
    global_experts = D([[0.0, 0.0], [5.0, 5.0], [7.0, -7.0]])  # (E=3, P=2)
    client_experts = D(
        [
            [[1.0, 2.0], [10.0, 10.0], [1.0, 1.0]],
            [[3.0, 6.0], [20.0, 20.0], [2.0, 2.0]],
            [[9.0, 9.0], [30.0, 30.0], [3.0, 3.0]],
        ]
    )  # (C=3, E=3, P=2)
    usage = D([[0.5, 0.3, 0.0], [0.2, 0.1, 0.05], [0.05, 0.4, 0.0]])
    trained = B([[True, True, True], [True, True, True], [True, False, True]])
    num_examples = [10, 30, 60]
    tau = 0.1
    got = aggregate_experts(global_experts, client_experts, usage, trained, num_examples, tau)
    # expert 0: clients 0, 1 qualify (client 2 usage 0.05 < tau): (10*[1,2] + 30*[3,6]) / 40 = [2.5, 5]
    # expert 1: client 0 (0.3), client 1 (0.1 >= tau); client 2 did not train it: (10*10 + 30*20)/40 = 17.5
    # expert 2: nobody reaches tau: global kept
    expected = D([[2.5, 5.0], [17.5, 17.5], [7.0, -7.0]])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    weights = expert_weights(usage, trained, num_examples, tau)
    torch.testing.assert_close(weights, D([[0.25, 0.25, 0.0], [0.75, 0.75, 0.0], [0.0, 0.0, 0.0]]))


def test_unqualified_expert_keeps_global_bit_for_bit():
    gen = torch.Generator().manual_seed(1)
    global_experts = torch.randn(4, 3, 5, generator=gen)  # float32, odd trailing shape
    client_experts = torch.randn(2, 4, 3, 5, generator=gen)
    usage = torch.tensor([[0.9, 0.0, 0.9, 0.9], [0.9, 0.9, 0.0, 0.9]])
    trained = B([[True, True, False, False], [True, False, True, False]])
    got = aggregate_experts(global_experts, client_experts, usage, trained, [3, 4], 0.5)
    # expert 1: client 0 below tau, client 1 did not train; expert 2: the reverse; expert 3: nobody trained
    for e in (1, 2, 3):
        assert torch.equal(got[e], global_experts[e])
    torch.testing.assert_close(got[0], (3 * client_experts[0, 0] + 4 * client_experts[1, 0]) / 7)


def test_client_with_zero_examples_gets_no_weight():
    got = aggregate_experts(D([[0.0]]), D([[[1.0]], [[3.0]]]), D([[1.0], [1.0]]), B([[True], [True]]), [0, 5], 0.0)
    assert got.tolist() == [[3.0]]


def test_aggregate_trained_is_usage_free_and_matches_reference():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 2))
    cl = rng.normal(size=(4, 3, 2))
    trained = rng.random((4, 3)) > 0.5
    n = np.array([1.0, 2.0, 3.0, 4.0])
    got = aggregate_trained(torch.from_numpy(g), torch.from_numpy(cl), torch.from_numpy(trained), torch.from_numpy(n))
    expected = np_aggregate_experts(g, cl, np.zeros((4, 3)), trained, n, 0.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_fedavg_hand_case():
    tensors = D([[[1.0, 2.0]], [[3.0, 4.0]]])  # (C=2, 1, 2)
    torch.testing.assert_close(fedavg(tensors, [1, 3]), D([[2.5, 3.5]]))
    torch.testing.assert_close(aggregate_routers_by_data(D([[0.0, 0.0]]), tensors, [1, 3]), D([[2.5, 3.5]]))


def test_inputs_are_not_mutated():
    gen = torch.Generator().manual_seed(2)
    args = [torch.randn(3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen), torch.rand(2, 3, generator=gen),
            B([[True, False, True], [True, True, False]]), torch.tensor([2.0, 3.0])]
    copies = [a.clone() for a in args]
    out = aggregate_experts(*args, 0.2)
    out.add_(1.0)  # the result must not alias an input either
    routers = [torch.randn(3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen), torch.rand(2, 3, generator=gen),
               torch.rand(2, 3, generator=gen)]
    router_copies = [r.clone() for r in routers]
    new_router, _ = aggregate_routers(*routers, 2.0 / 3.0)  # tau above every usage: fallback path
    new_router.add_(1.0)
    for a, c in zip(args + routers, copies + router_copies):
        assert torch.equal(a, c)


# ----------------------------------------------------------------------------- routers, hand cases


def test_aggregate_routers_hand_case():
    global_router = D([[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]])  # (E=3, H=2)
    client_routers = D([[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3])  # (C=2, E=3, H=2)
    usage = D([[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]])
    importance = D([[0.5, 1.0, 0.9], [1.0, 0.4, 0.2]])
    tau = 0.3
    # S_0 = {0, 1}, S_1 = {1, 2}, S_global = {0, 1, 2}
    # alpha_0 = (0.6*0.5 + 0.4*1.0) / 3 = 0.7/3 ; alpha_1 = (0.5*0.4 + 0.5*0.2) / 3 = 0.3/3
    new_router, alpha = aggregate_routers(global_router, client_routers, usage, importance, tau, normalize=False)
    torch.testing.assert_close(alpha, D([0.7 / 3, 0.3 / 3]))
    torch.testing.assert_close(new_router, D([[0.7 / 3, 0.3 / 3]] * 3))
    new_router, alpha = aggregate_routers(global_router, client_routers, usage, importance, tau)
    torch.testing.assert_close(alpha, D([0.7, 0.3]))
    torch.testing.assert_close(new_router, D([[0.7, 0.3]] * 3))
    torch.testing.assert_close(router_weights(usage, importance, tau), D([0.7, 0.3]))
    torch.testing.assert_close(routing_consistency(usage, tau), D([2 / 3, 2 / 3]))


def test_routing_consistency_hand_case():
    usage = D([[0.5, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # S_global = {0, 1, 2}: r = 1/3, 3/3, 0
    torch.testing.assert_close(routing_consistency(usage, 0.25), D([1 / 3, 1.0, 0.0]))
    assert torch.equal(routing_consistency(usage, 0.75), D([0.0, 0.0, 0.0]))


@pytest.mark.parametrize("normalize", [True, False])
def test_no_client_above_tau_keeps_global_router_and_zero_alpha(normalize):
    gen = torch.Generator().manual_seed(4)
    global_router = torch.randn(5, 7, generator=gen)
    client_routers = torch.randn(3, 5, 7, generator=gen)
    usage = torch.full((3, 5), 0.2)
    new_router, alpha = aggregate_routers(global_router, client_routers, usage, torch.ones(3, 5), 0.21, normalize)
    assert torch.equal(new_router, global_router) and new_router.data_ptr() != global_router.data_ptr()
    assert torch.equal(alpha, torch.zeros(3))


@pytest.mark.parametrize("normalize", [True, False])
def test_all_alpha_zero_for_another_reason_keeps_global_router(normalize):
    global_router = D([[1.0, 2.0], [3.0, 4.0]])
    new_router, alpha = aggregate_routers(
        global_router, D([[[0.0, 0.0]] * 2] * 2), D([[0.5, 0.5], [0.5, 0.5]]), torch.zeros(2, 2, dtype=torch.float64),
        0.1, normalize,
    )
    assert torch.equal(new_router, global_router)
    assert torch.equal(alpha, torch.zeros(2, dtype=torch.float64))


def test_routers_match_reference_on_random_case():
    rng = np.random.default_rng(5)
    g, cr = rng.normal(size=(6, 4)), rng.normal(size=(3, 6, 4))
    usage, importance = rng.random((3, 6)) * 0.4, rng.random((3, 6))
    for normalize in (True, False):
        got_router, got_alpha = aggregate_routers(
            torch.from_numpy(g), torch.from_numpy(cr), torch.from_numpy(usage), torch.from_numpy(importance), 0.2,
            normalize,
        )
        exp_router, exp_alpha = np_router(g, cr, usage, importance, 0.2, normalize)
        np.testing.assert_allclose(got_alpha.numpy(), exp_alpha, rtol=1e-12)
        np.testing.assert_allclose(got_router.numpy(), exp_router, rtol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_client_count_mismatch_message():
    with pytest.raises(ValueError) as info:
        aggregate_experts(torch.zeros(8, 5), torch.zeros(4, 8, 5), torch.zeros(3, 8), torch.ones(3, 8, dtype=torch.bool),
                          [1, 1, 1], 0.1)
    assert str(info.value) == "client_experts: expected shape (C, E, ...) with C=3 matching usage, got (4, 8, 5)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"global_experts": torch.zeros(7, 5)}, r"^global_experts: expected shape \(E, \.\.\.\) with E=8 matching usage, got \(7, 5\)$"),
        ({"client_experts": torch.zeros(3, 8, 6)}, r"^client_experts: expected shape \(C, E, \.\.\.\) with trailing shape \(8, 5\) matching global_experts, got \(3, 8, 6\)$"),
        ({"client_experts": torch.zeros(3, 8, 5, dtype=torch.float64)}, r"^client_experts: expected dtype torch.float32 matching global_experts, got torch.float64$"),
        ({"trained": torch.ones(3, 7, dtype=torch.bool)}, r"^trained: expected shape \(C, E\) with C=3, E=8 matching usage, got \(3, 7\)$"),
        ({"trained": torch.ones(3, 8)}, r"^trained: expected a bool tensor, got dtype torch.float32$"),
        ({"num_examples": [1, 1]}, r"^num_examples: expected shape \(C,\) with C=3 matching usage, got \(2,\)$"),
        ({"num_examples": [1, -2, 1]}, r"^num_examples: expected values >= 0, got -2\.0 at index 1$"),
        ({"usage": -torch.ones(3, 8)}, r"^usage: expected values >= 0, got -1\.0 at index \(0, 0\)$"),
        ({"tau": 1.5}, r"^tau: expected a float in \[0, 1\], got 1\.5$"),
        ({"tau": -0.1}, r"^tau: expected a float in \[0, 1\], got -0\.1$"),
    ],
)
def test_aggregate_experts_argument_errors(overrides, message):
    args = {"global_experts": torch.zeros(8, 5), "client_experts": torch.zeros(3, 8, 5), "usage": torch.zeros(3, 8),
            "trained": torch.ones(3, 8, dtype=torch.bool), "num_examples": [1, 1, 1], "tau": 0.1} | overrides
    with pytest.raises(ValueError, match=message):
        aggregate_experts(**args)


def test_router_and_fedavg_argument_errors():
    usage, importance = torch.zeros(3, 8), torch.zeros(3, 8)
    with pytest.raises(ValueError, match=r"^client_routers: expected shape \(C, E, \.\.\.\) with C=3 matching usage, got \(2, 8, 4\)$"):
        aggregate_routers(torch.zeros(8, 4), torch.zeros(2, 8, 4), usage, importance, 0.1)
    with pytest.raises(ValueError, match=r"^importance: expected shape \(C, E\) with C=3, E=8 matching usage, got \(3, 7\)$"):
        aggregate_routers(torch.zeros(8, 4), torch.zeros(3, 8, 4), usage, torch.zeros(3, 7), 0.1)
    with pytest.raises(ValueError, match=r"^importance: expected values >= 0, got -1\.0 at index \(0, 0\)$"):
        router_weights(usage, -torch.ones(3, 8), 0.1)
    with pytest.raises(ValueError, match=r"^normalize: expected a bool, got 'yes'$"):
        aggregate_routers(torch.zeros(8, 4), torch.zeros(3, 8, 4), usage, importance, 0.1, "yes")
    with pytest.raises(ValueError, match=r"^num_examples: expected a positive total, got \[0\.0, 0\.0\]$"):
        fedavg(torch.zeros(2, 3), [0, 0])
    with pytest.raises(ValueError, match=r"^client_routers: expected shape \(C, 8, 4\) matching global_router, got \(2, 8, 5\)$"):
        aggregate_routers_by_data(torch.zeros(8, 4), torch.zeros(2, 8, 5), [1, 1])


# ----------------------------------------------------------------------------- properties


@st.composite
def rounds(draw):
    num_clients = draw(st.integers(1, 5))
    num_experts = draw(st.integers(1, 5))
    trailing = draw(st.sampled_from([(), (3,), (2, 3)]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    usage = draw(hnp.arrays(np.float64, (num_clients, num_experts), elements=st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0])))
    trained = draw(hnp.arrays(np.bool_, (num_clients, num_experts)))
    num_examples = draw(hnp.arrays(np.int64, (num_clients,), elements=st.integers(0, 50)))
    tau = draw(st.sampled_from([0.0, 0.05, 0.1, 0.5]))
    return {
        "global_experts": rng.normal(size=(num_experts, *trailing)),
        "client_experts": rng.normal(size=(num_clients, num_experts, *trailing)),
        "usage": usage,
        "trained": trained,
        "num_examples": num_examples,
        "tau": tau,
        "importance": rng.random((num_clients, num_experts)),
    }


def _torch_args(r, dtype=torch.float64, order=None):
    order = np.arange(r["usage"].shape[0]) if order is None else order
    return (torch.from_numpy(r["global_experts"]).to(dtype), torch.from_numpy(r["client_experts"][order]).to(dtype),
            torch.from_numpy(r["usage"][order]), torch.from_numpy(r["trained"][order]),
            torch.from_numpy(r["num_examples"][order]), r["tau"])


@settings(max_examples=50, deadline=None)
@given(rounds())
def test_property_matches_reference_and_weights_sum_to_one(r):
    got = aggregate_experts(*_torch_args(r))
    expected = np_aggregate_experts(r["global_experts"], r["client_experts"], r["usage"], r["trained"],
                                    r["num_examples"], r["tau"])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)

    weights = expert_weights(torch.from_numpy(r["usage"]), torch.from_numpy(r["trained"]),
                             torch.from_numpy(r["num_examples"]), r["tau"]).numpy()
    qualifies = (r["usage"] >= r["tau"]) & r["trained"] & (r["num_examples"] > 0)[:, None]
    assert np.all(weights[~qualifies] == 0)
    for e in range(weights.shape[1]):
        if qualifies[:, e].any() and r["num_examples"][qualifies[:, e]].sum() > 0:
            assert weights[:, e].sum() == pytest.approx(1.0, abs=1e-12)
        else:
            assert weights[:, e].sum() == 0


@settings(max_examples=50, deadline=None)
@given(rounds(), st.randoms(use_true_random=False))
def test_property_client_order_does_not_matter(r, random):
    order = np.array(random.sample(range(r["usage"].shape[0]), r["usage"].shape[0]))
    base = aggregate_experts(*_torch_args(r))
    permuted = aggregate_experts(*_torch_args(r, order=order))
    torch.testing.assert_close(permuted, base, rtol=1e-12, atol=1e-12)

    def routers(o):
        return aggregate_routers(torch.from_numpy(r["global_experts"]), torch.from_numpy(r["client_experts"][o]),
                                 torch.from_numpy(r["usage"][o]), torch.from_numpy(r["importance"][o]), r["tau"])

    (router_a, alpha_a), (router_b, alpha_b) = routers(np.arange(len(order))), routers(order)
    torch.testing.assert_close(router_b, router_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alpha_b, alpha_a[order], rtol=1e-12, atol=1e-15)


@settings(max_examples=50, deadline=None)
@given(rounds(), st.integers(0, 4))
def test_property_single_trainer_with_tau_zero_returns_its_tensors(r, pick):
    """All experts trained by one client (the others trained nothing), tau = 0: exactly its tensors."""
    num_clients = r["usage"].shape[0]
    j = pick % num_clients
    trained = np.zeros_like(r["trained"])
    trained[j] = True
    num_examples = r["num_examples"].copy()
    num_examples[j] = max(num_examples[j], 1)
    got = aggregate_experts(torch.from_numpy(r["global_experts"]), torch.from_numpy(r["client_experts"]),
                            torch.from_numpy(r["usage"]), torch.from_numpy(trained), torch.from_numpy(num_examples), 0.0)
    assert torch.equal(got, torch.from_numpy(r["client_experts"][j]))


@settings(max_examples=50, deadline=None)
@given(rounds())
def test_property_router_alpha_and_reference(r):
    args = (torch.from_numpy(r["global_experts"]), torch.from_numpy(r["client_experts"]),
            torch.from_numpy(r["usage"]), torch.from_numpy(r["importance"]), r["tau"])
    new_router, alpha = aggregate_routers(*args)
    exp_router, exp_alpha = np_router(r["global_experts"], r["client_experts"], r["usage"], r["importance"], r["tau"], True)
    np.testing.assert_allclose(alpha.numpy(), exp_alpha, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(new_router.numpy(), exp_router, rtol=1e-10, atol=1e-12)
    assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-12) or torch.equal(alpha, torch.zeros_like(alpha))
    r_c = routing_consistency(torch.from_numpy(r["usage"]), r["tau"])
    assert ((r_c >= 0) & (r_c <= 1)).all()


@settings(max_examples=50, deadline=None)
@given(rounds())
def test_property_float32_and_float64_agree(r):
    e64 = aggregate_experts(*_torch_args(r, torch.float64))
    e32 = aggregate_experts(*_torch_args(r, torch.float32))
    assert e32.dtype == torch.float32
    np.testing.assert_allclose(e32.double().numpy(), e64.numpy(), rtol=1e-5, atol=1e-5)
    rest = (torch.from_numpy(r["usage"]), torch.from_numpy(r["importance"]), r["tau"])
    r64, a64 = aggregate_routers(torch.from_numpy(r["global_experts"]), torch.from_numpy(r["client_experts"]), *rest)
    r32, a32 = aggregate_routers(torch.from_numpy(r["global_experts"]).float(),
                                 torch.from_numpy(r["client_experts"]).float(), *rest)
    np.testing.assert_allclose(r32.double().numpy(), r64.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a32.double().numpy(), a64.numpy(), rtol=1e-6, atol=1e-7)
