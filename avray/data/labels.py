"""Labels are optional: a missing label is ``None`` everywhere, from listing to metrics.

Ray Data turns an object column that holds only ``None`` into an Arrow *null* column, which
reads back into a numpy batch as float NaN: an unlabelled corpus then looks labelled, with one
class called NaN (a NaN label once crashed validation's kNN probe). Stages that emit labels
therefore write a typed string column (:func:`label_column`), and code that reads labels from
a batch takes them through :func:`batch_labels`, which also mends shards written before.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa


def label_or_none(value) -> str | None:
    """``value`` as a label: a non-empty string, or None for a missing one (None, NaN, ``pd.NA``, "")."""
    if value is None or value is pa.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    if type(value).__name__ == "NAType":  # pandas' NA, without importing pandas
        return None
    text = str(value).strip()
    return text or None


def label_column(values: Iterable) -> pa.Array:
    """A typed string column of labels (nulls where missing), whatever the values look like."""
    return pa.array([label_or_none(v) for v in values], pa.string())


def batch_labels(batch: dict) -> np.ndarray:
    """The ``label`` column of a numpy batch as object ``[N]`` of ``str | None``."""
    return np.array([label_or_none(v) for v in batch["label"]], dtype=object)


def labelled_count(labels: Iterable[str | None]) -> tuple[int, int]:
    """(clips that carry a label, distinct labels among them)."""
    present = [label for label in labels if label is not None]
    return len(present), len(set(present))


def case_variants_note(labels: Iterable[str | None]) -> str | None:
    """One line naming the labels that differ only by case, with their videos each, or None.

    Such labels stay separate classes: ``Dog`` and ``dog`` may be one class misspelt or two
    (a dataset's own names), and merging them silently would hide the question."""
    videos = Counter(label for label in labels if label is not None)
    groups: dict[str, list[str]] = {}
    for label in sorted(videos):
        groups.setdefault(label.casefold(), []).append(label)
    clashes = [variants for variants in groups.values() if len(variants) > 1]
    if not clashes:
        return None
    named = "; ".join(", ".join(f"{label!r} ({videos[label]} video(s))" for label in group) for group in clashes)
    return (
        f"{len(clashes)} label(s) differ only by case and stay separate classes: {named}; "
        "rename them in the manifest or folders to merge them"
    )
