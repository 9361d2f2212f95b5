"""Checks on the one real RSNA study in ../shared (skipped where it is absent)."""

import numpy as np
import pytest
from conftest import SHARED_SAMPLE

from ichdet.data.index import build_index
from ichdet.dicom.read import read_slice

STUDY = SHARED_SAMPLE / "rsna-study-tilted"
pytestmark = pytest.mark.skipif(not STUDY.is_dir(), reason="../shared/real-sample not present")


def test_tilted_real_study_orders_by_z_with_even_spacing():
    df, errors, _ = build_index(STUDY)
    assert errors.empty and len(df) == 36 and df["series_id"].nunique() == 1
    spacing = np.diff(df["z"].to_numpy())
    assert np.allclose(spacing, spacing[0], atol=0.01) and spacing[0] > 0
    first = read_slice(df["source"].iloc[0])
    assert first.meta.orientation[4] < 0.999  # tilted gantry: column direction not along y


def test_real_slice_hounsfield_units_are_plausible():
    df, _, _ = build_index(STUDY)
    middle = read_slice(df["source"].iloc[len(df) // 2])
    hu = middle.hu
    assert hu.dtype == np.float32 and hu.min() == -1024  # padding set to air
    brain = hu[(hu > -100) & (hu < 100)]
    assert 20 < np.median(brain) < 50  # soft tissue / brain
    assert hu.max() > 1000  # skull
