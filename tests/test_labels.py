import numpy as np
import pytest

from ichdet.labels import (
    LABEL_WEIGHTS,
    LABELS,
    SUBTYPES,
    WEIGHT_VECTOR,
    any_label,
    format_kaggle_id,
    parse_kaggle_id,
)


def test_kaggle_order_and_weights():
    assert LABELS == (
        "epidural",
        "intraparenchymal",
        "intraventricular",
        "subarachnoid",
        "subdural",
        "any",
    )
    assert LABELS[:5] == SUBTYPES
    assert LABEL_WEIGHTS["any"] == 2 and all(LABEL_WEIGHTS[s] == 1 for s in SUBTYPES)
    assert WEIGHT_VECTOR.tolist() == [1, 1, 1, 1, 1, 2]


def test_kaggle_id_round_trip():
    assert format_kaggle_id("ID_12cadc6af", "epidural") == "ID_12cadc6af_epidural"
    assert parse_kaggle_id("ID_12cadc6af_any") == ("ID_12cadc6af", "any")
    for bad in ("ID_12cadc6af", "ID_x_bleed", "_any", "any"):
        with pytest.raises(ValueError):
            parse_kaggle_id(bad)
    with pytest.raises(ValueError):
        format_kaggle_id("ID_x", "stroke")


def test_any_is_max_of_subtypes():
    sub = np.array([[0, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    assert any_label(sub).tolist() == [0, 1, 1]
