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


CQ500 = SHARED_SAMPLE / "cq500-j2k-edh"
needs_cq500 = pytest.mark.skipif(not CQ500.is_dir(), reason="../shared/real-sample/cq500 absent")


def _plan(folder, **options):
    from ichdet.selection.choose import SelectionOptions, plan_reads

    index, _, report = build_index(folder)
    return index, plan_reads(index, report["other_objects"], SelectionOptions(**options))


@needs_cq500
def test_cq500_thin_tag_but_spacing_from_positions_one_slice_a_slab():
    index, plan = _plan(CQ500, training_mm=5.0)
    (series,) = plan.series.to_dict("records")
    assert series["read"] and series["thickness_mm"] == pytest.approx(0.625)
    assert series["spacing_mm"] == pytest.approx(4.6, abs=0.4)  # every eighth slice kept
    assert series["kernel_class"] == "soft" and series["orientation"] == "axial"
    assert series["image_skull_ring"] >= 0.7 and series["image_noise_hu"] < 12
    assert len(plan.rows) == 30 and (plan.rows["slab_slices"] == 1).all()
    assert plan.rows["z"].tolist() == index["z"].tolist()
    assert "gantry tilt" in plan.studies["notes"][0]


@needs_cq500
def test_cq500_in_10_mm_slabs_named_by_real_instances():
    index, plan = _plan(CQ500, slab=10.0, training_mm=5.0)
    rows = plan.rows
    assert len(rows) == 15 and (rows["slab_slices"] == 2).all()
    pairs = index["z"].to_numpy().reshape(15, 2)
    assert rows["z"].to_numpy() == pytest.approx(pairs.mean(axis=1))
    assert rows["image_id"].tolist() == index["image_id"].tolist()[1::2]  # the middle of two
    assert [i.split() for i in rows["slab_ids"]] == index["image_id"].to_numpy().reshape(
        15, 2
    ).tolist()


@needs_cq500
def test_cq500_predicted_in_slabs_key_slices_and_sr_reference_its_instances(tmp_path):
    import pydicom
    from serve_fixtures import build_model_and_studies

    from ichdet.inference.predict import predict
    from ichdet.inference.runners import load_runner
    from ichdet.reports.dicom_results import write_study_results
    from ichdet.selection.choose import SelectionOptions

    model = build_model_and_studies(tmp_path / "model")[0]
    runner = load_runner([model])
    options = SelectionOptions(slab=10.0, training_mm=5.0)
    result = predict(runner, CQ500, tmp_path / "out", selection=options)
    instances = set(build_index(CQ500)[0]["image_id"])
    study = result.studies.iloc[0]
    assert study["status"] == "assessed" and len(result.slices) == 15
    assert {study[f"{n}_slice"] for n in ("any", "epidural", "subarachnoid")} <= instances
    paths, failed = write_study_results(runner, result, tmp_path / "dicom", "test")
    assert not failed
    sr = pydicom.dcmread(next(p for p in paths if p.name.startswith("sr_")))
    evidence = {
        item.ReferencedSOPInstanceUID
        for group in sr.CurrentRequestedProcedureEvidenceSequence
        for series in group.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence and evidence <= instances


def test_rsna_real_study_is_read_with_its_tilt_noted():
    index, plan = _plan(STUDY)
    assert plan.studies["status"][0] == "assessed" and len(plan.rows) == len(index)
    assert "gantry tilt" in plan.studies["notes"][0]
