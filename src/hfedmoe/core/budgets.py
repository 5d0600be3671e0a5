"""Device profiles and a cost model that turns a profile into an expert budget (method.md, Setting).

The budget ``C_budget(c)`` is the number of experts a client may train per batch. It is not typed
by hand: :func:`expert_budget` takes the largest count whose training state (weights, gradients,
optimizer state, activations; :meth:`CostModel.training_bytes`) fits the profile's memory.

Decision: ``budget_scope="layer"`` (default) counts experts per MoE layer; ``"model"`` counts
them across all layers.

Emulated heterogeneity. The paper emulated weak and strong clients with memory caps of 12-32 GB
on Jetson AGX Xavier boards training Switch-base-64 / DeepSeekMoE-16B. This project's default
model (MiniLM-MoE, about 22 M parameters) fits in well under 1 GB, so real device memories would
make every client "strong". Simulations therefore cap memory at figures scaled to the model:
``memory_gb`` is a float, so ``DEVICE_PROFILES["jetson-agx-xavier-16gb"].scaled(memory_gb=0.05)``
(50 MB, 0.05 GiB) is a valid profile, keeping the device's throughput and links for the time model.

Units: ``memory_gb`` is GiB (2**30 bytes; memory is sold in binary units), ``tflops`` is sustained
fp32 TFLOP/s (10**12 FLOP/s), link speeds are Mbit/s (10**6 bit/s). All figures are nominal: the
sources are named on each preset, and figures the vendor does not publish are labelled estimates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hfedmoe.core import _checks
from hfedmoe.core.flops import BatchShape, FlopModel
from hfedmoe.errors import HFedMoEError

GIB = 2**30
BUDGET_SCOPES = ("layer", "model")


class BudgetError(HFedMoEError):
    """A device profile cannot train even one expert (a ``ValueError``)."""


@dataclass(frozen=True)
class DeviceProfile:
    """What one client device offers a training process.

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"jetson-agx-xavier-32gb"``.
    memory_gb : float > 0
        Memory the training process may use, in GiB. For dedicated boards and GPUs the full
        module/board memory (as the paper capped it); for phones and laptops the part an app can
        realistically get. A float, so scaled caps such as 0.05 work.
    tflops : float > 0
        Sustained fp32 throughput in TFLOP/s used by the simulated time model.
    uplink_mbps, downlink_mbps : float > 0
        Link speeds in Mbit/s.
    source : str
        Where the figures come from (vendor page or the assumption made).
    """

    name: str
    memory_gb: float
    tflops: float
    uplink_mbps: float
    downlink_mbps: float
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: expected a non-empty string, got {self.name!r}")
        for attr in ("memory_gb", "tflops", "uplink_mbps", "downlink_mbps"):
            value = _checks.real_number(attr, getattr(self, attr))
            if value <= 0:
                raise ValueError(f"{attr}: expected a number > 0, got {getattr(self, attr)!r}")
            object.__setattr__(self, attr, value)

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GIB)

    @property
    def flops_per_s(self) -> float:
        return self.tflops * 1e12

    def scaled(
        self,
        *,
        memory_gb: float | None = None,
        tflops: float | None = None,
        name: str | None = None,
    ) -> DeviceProfile:
        """A copy with a memory cap (and optionally throughput) changed, e.g. to fit a tiny model.

        The default name appends the cap, e.g. ``"jetson-agx-xavier-16gb@0.05gb"``.
        """
        new_memory = self.memory_gb if memory_gb is None else memory_gb
        new_name = name if name is not None else (
            self.name if memory_gb is None else f"{self.name}@{_checks._fmt(float(memory_gb))}gb"
        )
        return dataclasses.replace(
            self, name=new_name, memory_gb=new_memory, tflops=self.tflops if tflops is None else tflops
        )


def _profile(name: str, memory_gb: float, tflops: float, up: float, down: float, source: str) -> DeviceProfile:
    return DeviceProfile(name, memory_gb, tflops, up, down, source)


#: Presets from phones to a workstation GPU. Sources and derivations:
#:
#: * ``phone-low``: 4 GB RAM phone with an entry-level Arm Mali-G57-class GPU; about 1.5 GB is
#:   left to one app. 0.2 TFLOPS is an estimate (Arm publishes no FLOP figure for Mali-G57).
#:   LTE link 5 up / 20 down Mbit/s, below the medians of the Ookla Speedtest Global Index
#:   (speedtest.net/global-index, mobile).
#: * ``phone-flagship``: 12 GB RAM, Qualcomm Snapdragon 8 Gen 2 class (Adreno 740; Qualcomm
#:   product brief). 1.5 TFLOPS is a sustained estimate below the GPU's peak (phones throttle).
#:   4 GB usable by one app. 5G link 20 up / 150 down Mbit/s (Ookla Speedtest Global Index).
#: * ``raspberry-pi-5-8gb``: Raspberry Pi 5 product brief (raspberrypi.com/products/raspberry-pi-5):
#:   4 x Cortex-A76 at 2.4 GHz, 8 GB LPDDR4X. Peak fp32 NEON = 4 cores x 2.4 GHz x 16 FLOP/cycle
#:   = 0.15 TFLOPS; 0.05 sustained is an estimate. 6 GB usable. Wi-Fi 50 up / 100 down (assumed).
#: * ``jetson-orin-nano-8gb``: NVIDIA Jetson Orin Nano Series datasheet / developer.nvidia.com
#:   (jetson-orin): 1024-core Ampere GPU at 625 MHz -> 1024 x 2 x 0.625 GHz = 1.28 TFLOPS fp32;
#:   8 GB LPDDR5 shared with the CPU. Wi-Fi 50 up / 100 down (assumed).
#: * ``jetson-agx-xavier-16gb`` / ``-32gb``: NVIDIA Jetson AGX Xavier Series datasheet /
#:   developer.nvidia.com/embedded/jetson-agx-xavier: 512-core Volta GPU at 1377 MHz ->
#:   512 x 2 x 1.377 GHz = 1.41 TFLOPS fp32; 16 or 32 GB LPDDR4x shared. The paper's clients.
#:   Gigabit Ethernet on board; 100 up / 100 down Mbit/s assumed for a shared edge network.
#: * ``laptop-cpu``: 8-core x86 laptop with AVX2 FMA: peak 8 x 3 GHz x 32 FLOP/cycle = 0.77 TFLOPS;
#:   0.3 sustained (estimate). 16 GB RAM, 8 GB usable. Home broadband 20 up / 100 down (assumed).
#: * ``rtx-4090-workstation``: NVIDIA GeForce RTX 4090 spec page / Ada Lovelace whitepaper:
#:   24 GB GDDR6X, 82.6 TFLOPS fp32 (16384 CUDA cores x 2 x 2.52 GHz boost). The paper's server.
#:   Gigabit Ethernet 1000 / 1000 Mbit/s.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        _profile("phone-low", 1.5, 0.2, 5, 20, "4 GB phone, Mali-G57 class (estimate); LTE (Ookla index)"),
        _profile("phone-flagship", 4.0, 1.5, 20, 150, "Snapdragon 8 Gen 2 class, 12 GB (Qualcomm brief); 5G"),
        _profile("raspberry-pi-5-8gb", 6.0, 0.05, 50, 100, "Raspberry Pi 5 product brief (4x A76 2.4 GHz)"),
        _profile("jetson-orin-nano-8gb", 8.0, 1.28, 50, 100, "NVIDIA Jetson Orin Nano datasheet (1024 cores, 625 MHz)"),
        _profile("jetson-agx-xavier-16gb", 16.0, 1.41, 100, 100, "NVIDIA Jetson AGX Xavier datasheet (512 cores, 1377 MHz)"),
        _profile("jetson-agx-xavier-32gb", 32.0, 1.41, 100, 100, "NVIDIA Jetson AGX Xavier datasheet (512 cores, 1377 MHz)"),
        _profile("laptop-cpu", 8.0, 0.3, 20, 100, "8-core AVX2 laptop (estimate)"),
        _profile("rtx-4090-workstation", 24.0, 82.6, 1000, 1000, "NVIDIA GeForce RTX 4090 spec page"),
    )
}


@dataclass(frozen=True)
class CostModel:
    """Bytes and FLOPs of local training, from plain numbers describing the model and batch.

    Built from counts (so the core needs no ``nn.Module``); the code that knows the model
    (``hfedmoe.moe``) fills it in.

    Attributes
    ----------
    expert_params : int
        Parameters of one expert (weights and biases).
    dense_params : int
        Every parameter that is not an expert: embeddings, attention, norms, routers, task head.
    num_layers : int
        L, MoE layers.
    num_experts : int
        E, experts per MoE layer.
    top_k : int
        Experts each token is routed to (Eq. 1).
    hidden_size : int
        H.
    intermediate_size : int
        Hidden width inside one expert (for the activation estimate).
    tokens_per_batch : int
        batch_size x seq_len.
    bytes_per_param : int
        4 for fp32.
    optimizer_state_copies : int
        Extra copies per trainable parameter: 2 for Adam/AdamW, 1 for SGD with momentum, 0 for SGD.
    trainable_dense_params : int or None
        Dense parameters that are trained (None: all of ``dense_params``; 0: dense part frozen).
    embedding_params : int
        Part of ``dense_params`` that is a lookup table: memory, but no matmul FLOPs.
    expert_activation_bytes_per_token : int or None
        Saved-for-backward bytes per token in one trained expert. None: estimate
        ``(H + 2 * intermediate_size) * bytes_per_param`` (input, pre- and post-activation).
    dense_activation_bytes_per_token : int or None
        Saved-for-backward bytes per token per layer outside the experts. None: estimate
        ``8 * H * bytes_per_param`` (Q, K, V, attention output, projections, norms; the
        seq_len x heads attention-probability term is not included: pass a measured value).
    flops : FlopModel or None
        The model's FLOP model (:mod:`hfedmoe.core.flops`, what clients count). With it (and
        ``seq_len``) :meth:`step_flops` is that model on an expected batch; None: the lumped
        estimate from the counts above.
    seq_len : int
        Padded length of the expected batch (``tokens_per_batch / seq_len`` sequences); 0 = unknown.
    trainable_expert_params : int or None
        Parameters trained per trained expert (None: ``expert_params``; LoRA experts: the expert's
        adapter slices, while ``expert_params`` stays the frozen expert's size for weights and FLOPs).
    """

    expert_params: int
    dense_params: int
    num_layers: int
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    tokens_per_batch: int
    bytes_per_param: int = 4
    optimizer_state_copies: int = 2
    trainable_dense_params: int | None = None
    embedding_params: int = 0
    expert_activation_bytes_per_token: int | None = None
    dense_activation_bytes_per_token: int | None = None
    flops: FlopModel | None = None
    seq_len: int = 0
    trainable_expert_params: int | None = None

    def __post_init__(self) -> None:
        for attr in ("expert_params", "num_layers", "num_experts", "top_k", "hidden_size",
                     "intermediate_size", "tokens_per_batch", "bytes_per_param"):
            _checks.positive_int(attr, getattr(self, attr))
        for attr in ("dense_params", "optimizer_state_copies", "embedding_params"):
            _checks.non_negative_int(attr, getattr(self, attr))
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k: expected an integer in [1, {self.num_experts}] (num_experts), got {self.top_k}")
        if self.embedding_params > self.dense_params:
            raise ValueError(
                f"embedding_params: expected at most dense_params={self.dense_params}, got {self.embedding_params}"
            )
        if self.trainable_expert_params is None:
            object.__setattr__(self, "trainable_expert_params", self.expert_params)
        else:
            _checks.positive_int("trainable_expert_params", self.trainable_expert_params)
        if self.trainable_dense_params is None:
            object.__setattr__(self, "trainable_dense_params", self.dense_params)
        elif _checks.non_negative_int("trainable_dense_params", self.trainable_dense_params) > self.dense_params:
            raise ValueError(
                f"trainable_dense_params: expected at most dense_params={self.dense_params}, "
                f"got {self.trainable_dense_params}"
            )
        if self.expert_activation_bytes_per_token is None:
            estimate = (self.hidden_size + 2 * self.intermediate_size) * self.bytes_per_param
            object.__setattr__(self, "expert_activation_bytes_per_token", estimate)
        else:
            _checks.non_negative_int("expert_activation_bytes_per_token", self.expert_activation_bytes_per_token)
        if self.dense_activation_bytes_per_token is None:
            object.__setattr__(self, "dense_activation_bytes_per_token", 8 * self.hidden_size * self.bytes_per_param)
        else:
            _checks.non_negative_int("dense_activation_bytes_per_token", self.dense_activation_bytes_per_token)

    @property
    def total_params(self) -> int:
        return self.num_layers * self.num_experts * self.expert_params + self.dense_params

    @property
    def expert_bytes(self) -> int:
        """Bytes of one expert's parameters (what one expert costs to send)."""
        return self.expert_params * self.bytes_per_param

    def max_trainable(self, budget_scope: str = "layer") -> int:
        """E for ``"layer"``, L x E for ``"model"``."""
        scope = _checks.one_of("budget_scope", budget_scope, BUDGET_SCOPES)
        return self.num_experts if scope == "layer" else self.num_layers * self.num_experts

    def training_bytes(
        self,
        num_trainable_experts_per_layer: int,
        *,
        budget_scope: str = "layer",
        num_held_experts_per_layer: int | None = None,
    ) -> int:
        """Peak memory of one training step, in bytes.

        weights of every held expert and of the dense part
        + gradients and ``optimizer_state_copies`` optimizer copies of every trained parameter
        + activations: ``tokens x L x dense_activation_bytes_per_token`` plus, per layer, the
        worst case of every token hitting trained experts:
        ``tokens x min(top_k, trained experts) x expert_activation_bytes_per_token``.
        Untrained experts run without autograd (method.md, Decision (compute)) and cost only
        their weights. Nothing trainable means no activations kept.

        Parameters
        ----------
        num_trainable_experts_per_layer : int
            In [0, E] for ``budget_scope="layer"``; with ``"model"`` the count across all layers,
            in [0, L x E].
        budget_scope : {"layer", "model"}, keyword-only
        num_held_experts_per_layer : int or None, keyword-only
            Experts present on the client per layer (restrict mode); None: all E.
        """
        num_trained_total, act_slots = self._trained(num_trainable_experts_per_layer, budget_scope)
        held = self.num_experts if num_held_experts_per_layer is None else num_held_experts_per_layer
        held = _checks.non_negative_int("num_held_experts_per_layer", held)
        if held > self.num_experts:
            raise ValueError(f"num_held_experts_per_layer: expected an integer in [0, {self.num_experts}], got {held}")
        if budget_scope == "layer" and num_trainable_experts_per_layer > held:
            raise ValueError(
                f"num_trainable_experts_per_layer: expected at most num_held_experts_per_layer={held}, "
                f"got {num_trainable_experts_per_layer}"
            )
        b = self.bytes_per_param
        weights = (self.num_layers * held * self.expert_params + self.dense_params) * b
        trainable = num_trained_total * self.trainable_expert_params + self.trainable_dense_params
        grads_and_state = trainable * b * (1 + self.optimizer_state_copies)
        activations = 0
        if trainable > 0:
            activations = self.tokens_per_batch * (
                self.num_layers * self.dense_activation_bytes_per_token
                + act_slots * self.expert_activation_bytes_per_token
            )
        return int(weights + grads_and_state + activations)

    def step_flops(self, num_trainable_experts_per_layer: int, *, budget_scope: str = "layer") -> float:
        """FLOPs of one training step (forward + backward), for the simulated time model.

        Forward: ``2 x tokens x (non-embedding dense params + L x top_k x expert_params)``.
        Backward: trained experts cost 2x their forward (input and weight gradients), on the
        expected share of tokens they receive under uniform routing (trained / E per layer);
        untrained experts cost nothing; the dense part costs 1x its forward for input gradients
        (gradients must flow through it to reach the experts) plus 1x for weight gradients of its
        trainable part (embedding gradients are a scatter: no matmul FLOPs).
        """
        num_trained_total, _ = self._trained(num_trainable_experts_per_layer, budget_scope)
        if self.flops is not None and self.seq_len > 0:
            return self._model_step_flops(num_trained_total)
        tokens = float(self.tokens_per_batch)
        dense_compute = self.dense_params - self.embedding_params
        forward = 2.0 * tokens * (dense_compute + self.num_layers * self.top_k * self.expert_params)
        if num_trained_total == 0 and self.trainable_dense_params == 0:
            return forward
        trained_share = num_trained_total / (self.num_layers * self.num_experts)
        expert_backward = 2.0 * (2.0 * tokens * self.num_layers * self.top_k * trained_share * self.expert_params)
        dense_backward = 2.0 * tokens * (dense_compute + min(self.trainable_dense_params, dense_compute))
        return forward + expert_backward + dense_backward

    def _model_step_flops(self, num_trained_total: int) -> float:
        """:class:`FlopModel` on a full batch of ``tokens_per_batch`` real tokens, routed uniformly."""
        assert self.flops is not None
        L = self.num_layers
        pairs = self.tokens_per_batch * self.top_k  # per layer
        trained = round(pairs * num_trained_total / (L * self.num_experts))
        shape = BatchShape(max(1, self.tokens_per_batch // self.seq_len), self.seq_len, [pairs] * L, [trained] * L)
        forward, backward = self.flops.step(shape)
        return forward + backward

    def _trained(self, num_trainable: int, budget_scope: str) -> tuple[int, int]:
        """(experts trained in the whole model, worst-case trained expert slots per token over all layers)."""
        scope = _checks.one_of("budget_scope", budget_scope, BUDGET_SCOPES)
        n = _checks.non_negative_int("num_trainable_experts_per_layer", num_trainable)
        limit = self.max_trainable(scope)
        if n > limit:
            what = "num_experts" if scope == "layer" else "num_layers x num_experts"
            raise ValueError(f"num_trainable_experts_per_layer: expected an integer in [0, {limit}] ({what}), got {n}")
        if scope == "layer":
            return n * self.num_layers, self.num_layers * min(self.top_k, n)
        return n, min(self.top_k * self.num_layers, n)


def fits(
    profile: DeviceProfile,
    cost: CostModel,
    num_trainable_per_layer: int,
    *,
    budget_scope: str = "layer",
    num_held_experts_per_layer: int | None = None,
) -> bool:
    """Whether training that many experts fits ``profile.memory_gb`` (FedAvg: pass E)."""
    _check_types(profile, cost)
    needed = cost.training_bytes(
        num_trainable_per_layer, budget_scope=budget_scope, num_held_experts_per_layer=num_held_experts_per_layer
    )
    return needed <= profile.memory_bytes


def expert_budget(profile: DeviceProfile, cost: CostModel, budget_scope: str = "layer") -> int:
    """``C_budget(c)``: the largest expert count whose training state fits the profile's memory.

    Returns
    -------
    int
        In [1, E] for ``budget_scope="layer"`` (per MoE layer), in [1, L x E] for ``"model"``.

    Raises
    ------
    BudgetError
        When even one expert does not fit; the message names the profile, its memory and the
        bytes one expert needs.
    """
    _check_types(profile, cost)
    scope = _checks.one_of("budget_scope", budget_scope, BUDGET_SCOPES)
    capacity = profile.memory_bytes
    needed_for_one = cost.training_bytes(1, budget_scope=scope)
    if needed_for_one > capacity:
        per = "per layer" if scope == "layer" else "in the model"
        raise BudgetError(
            f"device profile {profile.name!r} ({_checks._fmt(profile.memory_gb)} GB = {capacity} bytes) cannot train "
            f"even 1 expert {per}: that needs {needed_for_one} bytes ({needed_for_one / GIB:.4g} GB)"
        )
    low, high = 1, cost.max_trainable(scope)  # invariant: low fits; training_bytes grows with the count
    while low < high:
        mid = (low + high + 1) // 2
        if cost.training_bytes(mid, budget_scope=scope) <= capacity:
            low = mid
        else:
            high = mid - 1
    return low


def compute_seconds(profile: DeviceProfile, flops: float) -> float:
    """Simulated compute time: FLOPs / sustained FLOP/s."""
    flops = _checks.real_number("flops", flops, 0.0)
    return flops / profile.flops_per_s


def transfer_seconds(profile: DeviceProfile, upload_bytes: int, download_bytes: int) -> float:
    """Simulated link time: bytes x 8 / (Mbit/s x 10**6), uplink plus downlink."""
    up = _checks.real_number("upload_bytes", upload_bytes, 0.0)
    down = _checks.real_number("download_bytes", download_bytes, 0.0)
    return up * 8 / (profile.uplink_mbps * 1e6) + down * 8 / (profile.downlink_mbps * 1e6)


def _check_types(profile: object, cost: object) -> None:
    if not isinstance(profile, DeviceProfile):
        raise ValueError(f"profile: expected a DeviceProfile, got {type(profile).__name__}")
    if not isinstance(cost, CostModel):
        raise ValueError(f"cost: expected a CostModel, got {type(cost).__name__}")

