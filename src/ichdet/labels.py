"""The six RSNA labels, the metric's weights and Kaggle id formats: one place for these facts."""

from __future__ import annotations

import numpy as np

#: Labels in the Kaggle submission order.
LABELS: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "any",
)
#: The five hemorrhage subtypes (every label but ``any``).
SUBTYPES: tuple[str, ...] = LABELS[:-1]
#: Index columns of study-level labels (``ichdet index --study-labels``), in LABELS order.
STUDY_LABELS: tuple[str, ...] = tuple(f"study_{name}" for name in LABELS)
#: Competition metric weights: ``any`` counts twice, each subtype once.
LABEL_WEIGHTS: dict[str, float] = {name: (2.0 if name == "any" else 1.0) for name in LABELS}
#: Weights as a float32 array in LABELS order.
WEIGHT_VECTOR: np.ndarray = np.array([LABEL_WEIGHTS[n] for n in LABELS], dtype=np.float32)


def format_kaggle_id(image_id: str, label: str) -> str:
    """``("ID_abc", "epidural") -> "ID_abc_epidural"`` (the long-form row id)."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return f"{image_id}_{label}"


def parse_kaggle_id(row_id: str) -> tuple[str, str]:
    """``"ID_abc_epidural" -> ("ID_abc", "epidural")``. Raises ValueError on other forms."""
    image_id, sep, label = row_id.rpartition("_")
    if not sep or not image_id or label not in LABELS:
        raise ValueError(f"not a Kaggle label id (ID_<image>_<label>): {row_id!r}")
    return image_id, label


def any_label(subtypes: np.ndarray) -> np.ndarray:
    """The ``any`` label from an (N, 5) subtype array: the maximum over subtypes."""
    return np.asarray(subtypes).max(axis=-1)
