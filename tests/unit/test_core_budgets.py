"""Device profiles, the cost model (hand-computed bytes and FLOPs) and expert budgets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfedmoe.core.budgets import (
    DEVICE_PROFILES,
    GIB,
    BudgetError,
    CostModel,
    DeviceProfile,
    compute_seconds,
    expert_budget,
    fits,
    transfer_seconds,
)


def small_cost(**overrides) -> CostModel:
    args = dict(expert_params=10, dense_params=100, num_layers=2, num_experts=4, top_k=2, hidden_size=3,
                intermediate_size=5, tokens_per_batch=7, embedding_params=40)
    return CostModel(**(args | overrides))


def profile_with_bytes(num_bytes: int, name: str = "capped") -> DeviceProfile:
    # dividing by a power of two is exact, so memory_bytes round-trips
    return DeviceProfile(name, num_bytes / GIB, 1.0, 10.0, 10.0)


# Hand computation for small_cost():
#   expert activation default (H + 2I) * 4 = 52 B/token, dense activation default 8H * 4 = 96 B/token/layer
#   weights = (L*E*10 + 100) * 4 = 720
#   b trained per layer: trainable = 2b*10 + 100, grads + Adam = trainable * 4 * 3
#   activations = 7 * (2*96 + 2*min(2, b)*52)
HAND_BYTES = {0: 720 + 1200 + 7 * 192, 1: 720 + 1440 + 7 * 296, 3: 720 + 1920 + 7 * 400, 4: 720 + 2160 + 7 * 400}


@pytest.mark.parametrize("num_trained", sorted(HAND_BYTES))
def test_training_bytes_hand_case(num_trained):
    assert small_cost().training_bytes(num_trained) == HAND_BYTES[num_trained]


def test_training_bytes_variants_hand_case():
    cost = small_cost()
    # model scope, 3 experts in total: trainable 130 -> 1560; activations 7 * (192 + 3*52) = 2436
    assert cost.training_bytes(3, budget_scope="model") == 720 + 1560 + 2436
    # restrict mode: 2 experts held per layer -> weights (2*2*10 + 100) * 4 = 560
    assert cost.training_bytes(1, num_held_experts_per_layer=2) == 560 + 1440 + 7 * 296
    # frozen dense part and nothing trained: weights only, no activations kept
    assert small_cost(trainable_dense_params=0).training_bytes(0) == 720
    # SGD (no optimizer state), explicit activation sizes
    sgd = small_cost(optimizer_state_copies=0, expert_activation_bytes_per_token=1, dense_activation_bytes_per_token=2)
    assert sgd.training_bytes(1) == 720 + 120 * 4 + 7 * (2 * 2 + 2 * 1 * 1)


def test_step_flops_hand_case():
    # forward = 2 * 7 * (60 non-embedding dense + 2 layers * top-2 * 10) = 1400
    # 1 of 4 experts trained per layer: experts backward = 2 * (2 * 7 * 2 * 2 * 0.25 * 10) = 280
    # dense backward = 2 * 7 * (60 input grads + 60 weight grads) = 1680
    assert small_cost().step_flops(1) == pytest.approx(1400 + 280 + 1680)
    assert small_cost(trainable_dense_params=0).step_flops(0) == pytest.approx(1400)
    # frozen dense, all experts: 1400 + 2 * (2 * 7 * 2 * 2 * 10) + 2 * 7 * 60
    assert small_cost(trainable_dense_params=0).step_flops(4) == pytest.approx(1400 + 1120 + 840)
    assert small_cost().step_flops(2, budget_scope="model") == pytest.approx(small_cost().step_flops(1))


def test_expert_budget_boundaries():
    cost = small_cost()
    assert expert_budget(profile_with_bytes(HAND_BYTES[3]), cost) == 3
    assert expert_budget(profile_with_bytes(HAND_BYTES[3] - 1), cost) == 2
    assert expert_budget(profile_with_bytes(10**9), cost) == 4  # capped at E
    # model scope: bytes(n) = 720 + (100 + 10n) * 12 + 7 * (192 + min(4, n) * 52); n = 6 -> 5440
    assert expert_budget(profile_with_bytes(HAND_BYTES[3]), cost, "model") == 6
    assert expert_budget(profile_with_bytes(10**9), cost, budget_scope="model") == 8


def test_budget_error_names_profile_memory_and_bytes_needed():
    with pytest.raises(BudgetError) as info:
        expert_budget(profile_with_bytes(HAND_BYTES[1] - 1, name="tiny-phone"), small_cost())
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'tiny-phone'" in message and f"= {HAND_BYTES[1] - 1} bytes" in message
    assert f"needs {HAND_BYTES[1]} bytes" in message and "1 expert per layer" in message


def test_fits_is_what_fedavg_uses():
    cost = small_cost()
    assert fits(profile_with_bytes(HAND_BYTES[4]), cost, 4)
    assert not fits(profile_with_bytes(HAND_BYTES[4] - 1), cost, 4)


def test_presets_span_phones_to_workstation_with_sources():
    names = set(DEVICE_PROFILES)
    assert {"phone-low", "phone-flagship", "jetson-agx-xavier-16gb", "jetson-agx-xavier-32gb",
            "rtx-4090-workstation"} <= names
    for name, profile in DEVICE_PROFILES.items():
        assert profile.name == name and profile.source
    assert DEVICE_PROFILES["jetson-agx-xavier-32gb"].memory_gb == 32.0
    assert DEVICE_PROFILES["jetson-agx-xavier-32gb"].tflops == pytest.approx(0.512 * 2 * 1.377, rel=1e-3)
    assert DEVICE_PROFILES["rtx-4090-workstation"].tflops == pytest.approx(82.6)
    memories = [p.memory_gb for p in DEVICE_PROFILES.values()]
    assert min(memories) <= 2 and max(memories) >= 24


def test_scaled_profile_keeps_throughput_and_accepts_fractional_gb():
    base = DEVICE_PROFILES["jetson-agx-xavier-16gb"]
    capped = base.scaled(memory_gb=0.05)
    assert capped.memory_gb == 0.05 and capped.memory_bytes == int(0.05 * GIB)
    assert capped.tflops == base.tflops and capped.uplink_mbps == base.uplink_mbps
    assert capped.name == "jetson-agx-xavier-16gb@0.05gb" and base.memory_gb == 16.0
    assert base.scaled(memory_gb=1, name="weak").name == "weak"


def test_time_helpers_hand_case():
    profile = DeviceProfile("p", 1.0, 1.0, 8.0, 16.0)
    assert compute_seconds(profile, 2e12) == pytest.approx(2.0)
    assert transfer_seconds(profile, 1_000_000, 2_000_000) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DeviceProfile("p", 0, 1.0, 1.0, 1.0), r"^memory_gb: expected a number > 0, got 0$"),
        (lambda: DeviceProfile("p", -1.0, 1.0, 1.0, 1.0), r"^memory_gb: expected a number > 0, got -1\.0$"),
        (lambda: DeviceProfile("p", 1.0, float("inf"), 1.0, 1.0), r"^tflops: expected a finite number, got inf$"),
        (lambda: DeviceProfile("", 1.0, 1.0, 1.0, 1.0), r"^name: expected a non-empty string, got ''$"),
        (lambda: small_cost(top_k=5), r"^top_k: expected an integer in \[1, 4\] \(num_experts\), got 5$"),
        (lambda: small_cost(expert_params=0), r"^expert_params: expected an integer >= 1, got 0$"),
        (lambda: small_cost(trainable_dense_params=101), r"^trainable_dense_params: expected at most dense_params=100, got 101$"),
        (lambda: small_cost().training_bytes(5), r"^num_trainable_experts_per_layer: expected an integer in \[0, 4\] \(num_experts\), got 5$"),
        (lambda: small_cost().training_bytes(-1), r"^num_trainable_experts_per_layer: expected an integer >= 0, got -1$"),
        (lambda: small_cost().training_bytes(9, budget_scope="model"), r"^num_trainable_experts_per_layer: expected an integer in \[0, 8\] \(num_layers x num_experts\), got 9$"),
        (lambda: small_cost().training_bytes(3, num_held_experts_per_layer=2), r"^num_trainable_experts_per_layer: expected at most num_held_experts_per_layer=2, got 3$"),
        (lambda: expert_budget(DEVICE_PROFILES["phone-low"], small_cost(), "global"), r"^budget_scope: expected one of 'layer', 'model', got 'global'$"),
        (lambda: expert_budget("phone-low", small_cost()), r"^profile: expected a DeviceProfile, got str$"),
    ],
)
def test_argument_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


costs = st.builds(
    CostModel,
    expert_params=st.integers(1, 10**6),
    dense_params=st.integers(0, 10**7),
    num_layers=st.integers(1, 8),
    num_experts=st.just(8),
    top_k=st.integers(1, 8),
    hidden_size=st.integers(1, 1024),
    intermediate_size=st.integers(1, 4096),
    tokens_per_batch=st.integers(1, 4096),
    optimizer_state_copies=st.integers(0, 2),
)


@settings(max_examples=50, deadline=None)
@given(costs, st.floats(1e-3, 64.0), st.sampled_from(["layer", "model"]))
def test_property_budget_is_the_largest_count_that_fits(cost, memory_gb, scope):
    profile = DeviceProfile("p", memory_gb, 1.0, 1.0, 1.0)
    limit = cost.max_trainable(scope)
    if not fits(profile, cost, 1, budget_scope=scope):
        with pytest.raises(BudgetError):
            expert_budget(profile, cost, scope)
        return
    budget = expert_budget(profile, cost, scope)
    assert 1 <= budget <= limit
    assert fits(profile, cost, budget, budget_scope=scope)
    assert budget == limit or not fits(profile, cost, budget + 1, budget_scope=scope)
    # more memory never lowers the budget
    assert expert_budget(profile.scaled(memory_gb=memory_gb * 2), cost, scope) >= budget
