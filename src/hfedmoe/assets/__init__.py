"""Pip-installed pretrained weights and datasets: registry, loaders, the ``hfedmoe assets`` table.

Heavy dependencies (torch, transformers) are imported only inside the model loaders.
"""

from hfedmoe.assets.datasets import (
    DATASET_NAMES,
    load_bbc,
    load_dataset,
    load_local,
    load_sms_spam,
    load_trec,
    load_vader,
)
from hfedmoe.assets.models import (
    load_minilm_tokenizer,
    load_smollm2_dense,
    load_smollm2_tokenizer,
    minilm_dir,
)
from hfedmoe.assets.registry import (
    ASSET_PINS,
    ASSETS,
    AssetInfo,
    AssetSpec,
    asset_dir,
    get_asset,
    list_assets,
)
from hfedmoe.data.types import LabeledTexts

__all__ = [
    "ASSETS",
    "ASSET_PINS",
    "DATASET_NAMES",
    "AssetInfo",
    "AssetSpec",
    "LabeledTexts",
    "asset_dir",
    "get_asset",
    "list_assets",
    "load_bbc",
    "load_dataset",
    "load_local",
    "load_minilm_tokenizer",
    "load_smollm2_dense",
    "load_smollm2_tokenizer",
    "load_sms_spam",
    "load_trec",
    "load_vader",
    "minilm_dir",
]
