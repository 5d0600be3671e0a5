"""Device profiles -> per-client expert budgets, through the cost model of the actual model.

The pure cost model lives in :mod:`hfedmoe.core.budgets`; this module measures the model (through
the MoE adapter) and applies the emulated memory caps.

Memory caps. The default MiniLM-MoE (23M parameters) fits in any real device many times over, so
heterogeneity is emulated, as the paper did with 12-32 GB caps on Jetson boards:

* ``clients.memory_scale = 0`` (auto, the default): caps are interpolated linearly in device
  memory between the weakest profile of the run, which gets exactly the training state of one
  expert per layer, and the strongest, which gets the state of training every expert (full
  FedAvg fits only there). Budgets then span 1..E and grow with device memory, whatever the
  model's size.
* ``clients.memory_scale = s > 0``: the cap is ``s x memory_gb`` of the profile, literally.
* ``clients.fixed_budgets``: budgets typed per client (cycled), for ablations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hfedmoe.config import RunConfig
from hfedmoe.core.budgets import DEVICE_PROFILES, GIB, BudgetError, CostModel, DeviceProfile, expert_budget, fits
from hfedmoe.core.budgets import transfer_seconds as _transfer_seconds
from hfedmoe.errors import HFedMoEError
from hfedmoe.moe import MoEModel
from hfedmoe.moe.lora_model import is_lora
from hfedmoe.client.flops import flop_model
from hfedmoe.client.parts import dense_names_for


@dataclass
class ClientBudget:
    profile: DeviceProfile  # with the emulated memory cap
    budget: int  # trainable experts per layer ("layer" scope) or in the model ("model" scope)
    fits_full: bool  # whether training every expert (FedAvg) fits the cap
    full_bytes: int  # training bytes with every expert trainable
    budget_bytes: int  # training bytes at the budget

    @property
    def flops_per_s(self) -> float:
        return self.profile.flops_per_s


def cost_model(mm: MoEModel, cfg: RunConfig) -> CostModel:
    """Count the model's parameters through the adapter and describe one local batch."""
    first = mm.base_expert(0, 0)  # the expert's own weights (LoRA experts: the frozen base)
    expert_params = sum(t.numel() for t in first.values())
    trainable_expert = sum(t.numel() for t in mm.get_expert(0, 0).values())  # LoRA: its adapter slices
    dense = mm.dense_named_parameters()
    router_params = sum(p.numel() for p in mm.router_parameters())
    dense_params = sum(p.numel() for p in dense.values()) + router_params
    if is_lora(mm):  # LoRA experts: every expert's adapter is held too
        dense_params += mm.num_layers * mm.num_experts * trainable_expert
    trainable_names = dense_names_for(list(dense), list(cfg.train.trainable))
    trainable_dense = sum(dense[n].numel() for n in trainable_names)
    if "routers" in cfg.train.trainable:
        trainable_dense += router_params
    embedding = sum(p.numel() for n, p in dense.items() if "embed" in n)
    intermediate = max(min(t.shape) for t in first.values() if t.dim() == 2)
    return CostModel(
        expert_params=expert_params,
        dense_params=dense_params,
        num_layers=mm.num_layers,
        num_experts=mm.num_experts,
        top_k=mm.top_k,
        hidden_size=mm.hidden_size,
        intermediate_size=intermediate,
        tokens_per_batch=cfg.train.batch_size * cfg.data.max_length,
        optimizer_state_copies=2 if cfg.train.optimizer == "adamw" else (1 if cfg.train.momentum else 0),
        trainable_dense_params=trainable_dense,
        embedding_params=embedding,
        flops=flop_model(mm, cfg.train.trainable),
        seq_len=cfg.data.max_length,
        trainable_expert_params=trainable_expert,
    )


def compute_budgets(cfg: RunConfig, mm: MoEModel, fed) -> list[ClientBudget]:
    """One :class:`ClientBudget` per client of ``fed`` (profiles cycled over clients)."""
    cost = cost_model(mm, cfg)
    scope = cfg.method.budget_scope
    full_n = cost.max_trainable(scope)
    full = cost.training_bytes(full_n, budget_scope=scope)
    one = cost.training_bytes(1, budget_scope=scope)
    profiles = [DEVICE_PROFILES[c.profile] for c in fed.clients]
    mem_min = min(p.memory_gb for p in profiles)
    mem_max = max(p.memory_gb for p in profiles)
    out = []
    for cid, prof in enumerate(profiles):
        if cfg.clients.memory_scale > 0:
            cap_gb = prof.memory_gb * cfg.clients.memory_scale
        else:
            frac = 1.0 if mem_max == mem_min else (prof.memory_gb - mem_min) / (mem_max - mem_min)
            cap_gb = (one + frac * (full - one)) / GIB
        capped = replace(prof, memory_gb=cap_gb)
        if cfg.clients.fixed_budgets:
            budget = int(cfg.clients.fixed_budgets[cid % len(cfg.clients.fixed_budgets)])
            if scope == "model":
                budget = min(budget * mm.num_layers, full_n)
        else:
            try:
                budget = expert_budget(capped, cost, scope)
            except BudgetError as exc:
                raise HFedMoEError(f"client {cid}: {exc} (raise clients.memory_scale or pick a larger profile)") from None
        out.append(ClientBudget(
            profile=capped,
            budget=budget,
            # typed budgets replace the memory caps: a client fits full training iff its budget does
            fits_full=(budget >= full_n) if cfg.clients.fixed_budgets else fits(capped, cost, full_n, budget_scope=scope),
            full_bytes=full,
            budget_bytes=cost.training_bytes(budget, budget_scope=scope),
        ))
    return out


def download_bytes(mm: MoEModel) -> int:
    """Bytes of the global model a client downloads (every parameter and buffer)."""
    return int(sum(t.numel() * t.element_size() for t in mm.model.state_dict().values()))


def transfer_seconds(info: ClientBudget, upload: int, download: int) -> float:
    return _transfer_seconds(info.profile, upload, download)


__all__ = ["ClientBudget", "compute_budgets", "cost_model", "download_bytes", "transfer_seconds"]
