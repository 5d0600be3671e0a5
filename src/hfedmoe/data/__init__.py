"""Datasets as LabeledTexts, federated partitioners and train/test/validation splits."""

from hfedmoe.data.partition import SCHEMES, partition
from hfedmoe.data.splits import client_val_split, train_test_split
from hfedmoe.data.stats import label_entropy, label_histogram
from hfedmoe.data.types import LabeledTexts

__all__ = [
    "SCHEMES",
    "LabeledTexts",
    "client_val_split",
    "label_entropy",
    "label_histogram",
    "partition",
    "train_test_split",
]
