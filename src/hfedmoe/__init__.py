"""hfedmoe: federated fine-tuning of Mixture-of-Experts language models across heterogeneous clients."""

__version__ = "0.1.0"
