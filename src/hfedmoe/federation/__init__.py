"""From a config to a federation: the model (:mod:`model`), the data and its partition into clients
(:mod:`data`), and each client's device profile and expert budget (:mod:`budgeting`). Shared by the
engines and the benchmark harness, so every method sees identical clients."""

from hfedmoe.federation.budgeting import ClientBudget, compute_budgets, cost_model, download_bytes, transfer_seconds
from hfedmoe.federation.data import ClientData, FederationData, build_federation, load_run_dataset, subsample
from hfedmoe.federation.model import build_model

__all__ = [
    "ClientBudget", "ClientData", "FederationData", "build_federation", "build_model", "compute_budgets",
    "cost_model", "download_bytes", "load_run_dataset", "subsample", "transfer_seconds",
]
