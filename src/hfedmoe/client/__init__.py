"""Local fine-tuning of one client (no engine imports): :mod:`train` and the trainable parts."""

from hfedmoe.client.train import (
    ClientUpdate,
    Selector,
    TrainPlan,
    TrainSettings,
    evaluate,
    train_client,
    trainable_dense_names,
)

__all__ = [
    "ClientUpdate", "Selector", "TrainPlan", "TrainSettings", "evaluate", "train_client", "trainable_dense_names",
]
