"""Containers for labelled text datasets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hfedmoe.errors import HFedMoEError


@dataclass(frozen=True, eq=False)
class LabeledTexts:
    """Texts with integer class labels and an optional group per text (e.g. a domain).

    Parameters
    ----------
    texts : list of str
        One string per example.
    labels : np.ndarray
        ``(N,)`` int64 class ids in ``[0, num_labels)``.
    label_names : list of str
        Name of each class id.
    groups : np.ndarray or None
        ``(N,)`` str array, e.g. the domain of each text; None when the data has no groups.
    name : str
        Dataset name used in logs and reports.
    conversations : list or None
        Causal LM, instruction or chat data: one list of ``{"role", "content"}`` messages per
        example (``texts`` then holds a plain rendering, for lengths and logs); None otherwise.
    """

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    groups: np.ndarray | None = None
    name: str = "data"
    conversations: list | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise HFedMoEError(
                f"{self.name}: labels must be a 1-D integer array, got shape {labels.shape} "
                f"dtype {labels.dtype}"
            )
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        if len(self.texts) != len(labels):
            raise HFedMoEError(
                f"{self.name}: labels has {len(labels)} entries, texts has {len(self.texts)}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.label_names)):
            raise HFedMoEError(
                f"{self.name}: labels must lie in [0, {len(self.label_names)}) "
                f"(len(label_names)), got range [{labels.min()}, {labels.max()}]"
            )
        if self.groups is not None:
            groups = np.asarray(self.groups).astype(str)
            if groups.shape != labels.shape:
                raise HFedMoEError(
                    f"{self.name}: groups has shape {groups.shape}, expected {labels.shape}"
                )
            object.__setattr__(self, "groups", groups)
        if self.conversations is not None and len(self.conversations) != len(labels):
            raise HFedMoEError(
                f"{self.name}: conversations has {len(self.conversations)} entries, texts has {len(self.texts)}"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """Number of classes (``len(label_names)``)."""
        return len(self.label_names)

    @property
    def group_names(self) -> list[str]:
        """Sorted distinct group values (empty when there are no groups)."""
        return [] if self.groups is None else sorted(set(self.groups.tolist()))

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledTexts:
        """A new dataset with the examples at ``indices`` (in that order); label names are kept."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise HFedMoEError(
                f"{self.name}: subset indices must lie in [0, {len(self)}), "
                f"got range [{idx.min()}, {idx.max()}]"
            )
        return LabeledTexts(
            texts=[self.texts[i] for i in idx.tolist()],
            labels=self.labels[idx],
            label_names=list(self.label_names),
            groups=None if self.groups is None else self.groups[idx],
            name=self.name,
            conversations=None if self.conversations is None else [self.conversations[i] for i in idx.tolist()],
        )
