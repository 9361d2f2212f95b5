"""Series selection on studies as a PACS sends them (``ichdet synth --series``): which series is
read, why the others are not, "not assessable" everywhere, and thin series read as slabs."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from serve_fixtures import build_model_and_studies
from typer.testing import CliRunner

from ichdet.cli import app
from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index
from ichdet.data.prepare import dicom_stack, slab_stack
from ichdet.dicom.read import quiet_pydicom
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.labels import LABELS
from ichdet.selection.choose import NOT_ASSESSABLE, SelectionOptions, plan_reads
from ichdet.selection.image_check import check_series
from ichdet.selection.slabs import make_slabs, parse_slab, slab_size
from ichdet.synth.studies import synthesize

cli = CliRunner()
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model_and_studies(tmp_path_factory.mktemp("model"))[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One study with every kind of series: {series number: its files in z order}."""
    root = tmp_path_factory.mktemp("pacs")
    synthesize(
        root,
        studies=1,
        seed=11,
        size=64,
        test_fraction=0.0,
        series=("localizer", "bone", "coronal", "sagittal", "contrast", "thin", "dose-sr", "chest"),
    )
    by_number: dict[int, list[tuple[int, Path]]] = {}
    with quiet_pydicom():  # RSNA-style ids are no valid UIDs
        for path in (root / "stage_2_train").glob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            k = int(ds.get("InstanceNumber", 0))
            by_number.setdefault(int(ds.SeriesNumber), []).append((k, path))
    return {n: [p for _, p in sorted(files)] for n, files in by_number.items()}  # z order


def subset(study, folder: Path, numbers, edit=None) -> Path:
    """A study of some of the series (``edit(ds)`` changes each file's header first)."""
    folder.mkdir(parents=True)
    with quiet_pydicom():
        _copy(study, folder, numbers, edit)
    return folder


def _copy(study, folder: Path, numbers, edit) -> None:
    for number in numbers:
        for path in study[number]:
            if edit is None:
                shutil.copy(path, folder / path.name)
            else:
                ds = pydicom.dcmread(path)
                edit(ds)
                ds.save_as(folder / path.name)


def _plan(folder, **options):
    index, _, report = build_index(folder)
    return plan_reads(index, report["other_objects"], SelectionOptions(**options))


def test_every_series_is_classified_and_the_axial_soft_one_is_read(study, tmp_path):
    plan = _plan(subset(study, tmp_path / "s", study))
    reasons = dict(zip(plan.series["series_number"], plan.series["reason"], strict=True))
    assert reasons[2] == "read"
    assert reasons[1].startswith("localizer")
    assert reasons[3].startswith("bone kernel (BONE)")
    assert reasons[4] == "coronal slices" and reasons[7] == "sagittal slices"
    assert reasons[5].startswith("post-contrast (contrast tags")
    assert reasons[6] == "may be read; #2 HEAD 5mm preferred"
    assert reasons[8] == "not a head (body part)"
    assert reasons[997].startswith("not a CT image series (radiation dose sr")
    assert plan.studies["status"].tolist() == ["assessed"]
    assert set(plan.rows["series_id"]) == set(plan.series.loc[plan.series["read"], "series_id"])
    read = plan.series[plan.series["read"]].iloc[0]
    assert read["image_skull_ring"] >= 0.7 and read["image_noise_hu"] < 12


def test_predict_reads_only_the_chosen_series_with_its_own_probabilities(model, study, tmp_path):
    runner = load_runner([model])
    whole = predict(runner, subset(study, tmp_path / "all", study), tmp_path / "o1")
    alone = predict(runner, subset(study, tmp_path / "one", [2]), tmp_path / "o2")
    assert whole.slices["series_id"].nunique() == 1
    assert whole.slices["image_id"].tolist() == alone.slices["image_id"].tolist()
    np.testing.assert_array_equal(
        whole.slices[list(LABELS)].to_numpy(), alone.slices[list(LABELS)].to_numpy()
    )
    series = pd.read_csv(tmp_path / "o1" / "series.csv")
    assert len(series) == 9 and series["read"].sum() == 1
    assert series.loc[series["read"], "any"].notna().all()
    assert series.loc[~series["read"], "any"].isna().all()
    studies = pd.read_csv(tmp_path / "o1" / "studies.csv")
    assert studies["status"].tolist() == ["assessed"] and studies["series_read"][0] == "#2 HEAD 5mm"


def test_series_all_reads_every_series_that_may_be_read(model, study, tmp_path):
    folder = subset(study, tmp_path / "s", study)
    result = predict(
        load_runner([model]), folder, tmp_path / "o", selection=SelectionOptions(series="all")
    )
    series = pd.read_csv(tmp_path / "o" / "series.csv")
    assert sorted(series.loc[series["read"], "series_number"]) == [2, 6]
    assert series.loc[series["read"], "any"].notna().all()
    assert result.studies["any"][0] == pytest.approx(series.loc[series["read"], "any"].max())


def _no_kernel(ds):
    del ds.ConvolutionKernel
    ds.SeriesDescription = "HEAD"


def _no_body_part(ds):
    del ds.BodyPartExamined


NOT_ASSESSABLE_CASES = [
    # (name, series numbers, header edit, study reason, a series reason starts with)
    ("scout and dose report", [1, 997], None, "only a localizer", "localizer"),
    ("bone kernel", [1, 3], None, "only bone-kernel series", "bone kernel (BONE)"),
    (
        "bone kernel, unnamed",
        [3],
        _no_kernel,
        "only bone-kernel series",
        "bone kernel on the image",
    ),
    ("post-contrast", [5], None, "only post-contrast series", "post-contrast"),
    ("chest, unnamed", [8], _no_body_part, "not a head CT", "not a head on the image"),
    ("reformats", [4, 7], None, "no series to read: coronal slices; sagittal slices", "coronal"),
]


@pytest.mark.parametrize("name, numbers, edit, reason, series_reason", NOT_ASSESSABLE_CASES)
def test_not_assessable(model, study, tmp_path, name, numbers, edit, reason, series_reason):
    folder = subset(study, tmp_path / "s", numbers, edit)
    result = predict(load_runner([model]), folder, tmp_path / "o")
    assert result.slices.empty
    (row,) = result.studies.to_dict("records")
    assert row["status"] == NOT_ASSESSABLE and row["reason"] == reason
    written = pd.read_csv(tmp_path / "o" / "studies.csv", keep_default_na=False).iloc[0]
    assert written["any"] == "" and written["any_flag"] == ""  # never a probability, nor a "no"
    series = pd.read_csv(tmp_path / "o" / "series.csv", keep_default_na=False)
    image_series = series[series["series_number"].isin([n for n in numbers if n < 900])]
    assert any(r.startswith(series_reason) for r in image_series["reason"])


def _drop(paths, keep):
    return [p for k, p in enumerate(paths) if keep(k, len(paths))]


@pytest.mark.parametrize(
    "keep, reason",
    [
        (lambda k, n: k < 6, "too few slices (6)"),
        (lambda k, n: k < n // 2, "incomplete coverage"),
        (lambda k, n: not n // 3 <= k < n // 3 + 6, "z gap of"),
    ],
)
def test_geometry_that_cannot_be_read(study, tmp_path, keep, reason):
    folder = tmp_path / "s"
    folder.mkdir()
    for path in _drop(study[2], keep):
        shutil.copy(path, folder / path.name)
    plan = _plan(folder)
    assert plan.studies["status"][0] == NOT_ASSESSABLE
    assert plan.series["reason"][0].startswith(reason)


def _valid_uids(ds):
    """RSNA-style "ID_..." identifiers -> valid UIDs (as a PACS has them), one for one."""
    from pydicom.uid import generate_uid

    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[str(getattr(ds, keyword))]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def test_the_cli_says_not_assessable_and_writes_the_sr_and_report(model, study, tmp_path):
    folder = subset(study, tmp_path / "s", [1, 3], _valid_uids)
    out = cli.invoke(
        app,
        ["predict", str(model), str(folder), "-o", str(tmp_path / "o"), "--report"]
        + ["--dicom-out", str(tmp_path / "d")],
    )
    assert out.exit_code == 0, out.output
    assert "NOT ASSESSABLE" in out.output and "only bone-kernel series" in out.output
    page = next((tmp_path / "o" / "report").glob("*.html")).read_text()
    assert "NOT ASSESSABLE: only bone-kernel series" in page and "probability" in page
    (sr_path,) = (tmp_path / "d").rglob("sr_*.dcm")
    assert not list((tmp_path / "d").rglob("ot_*.dcm"))  # no key slice to show
    sr = pydicom.dcmread(sr_path)
    items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
    finding = items["Finding"]
    assert finding.ConceptCodeSequence[0].CodeMeaning == "Study not assessable by the algorithm"
    assert finding.ContentSequence[0].TextValue == "only bone-kernel series"
    assert sr.StudyInstanceUID == pydicom.dcmread(next(folder.iterdir())).StudyInstanceUID
    if DCIODVFY:  # Debian's dicom3tools: the SR of a study not assessed is valid DICOM too
        out = subprocess.run([DCIODVFY, str(sr_path)], capture_output=True, text=True)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
        assert not errors, errors


def test_slab_sizes_and_parsing():
    assert slab_size(0.625, "auto", 5.0) == 8
    assert slab_size(4.7, "auto", 5.0) == 1  # CQ500's every-eighth slices: one slice a slab
    assert slab_size(2.5, "auto", 5.0) == 2
    assert slab_size(2.5, "off", 5.0) == 1
    assert slab_size(1.0, 3.0, 5.0) == 3
    assert parse_slab("auto") == "auto" and parse_slab("5mm") == 5.0
    for bad in ("-1", "thick", "nan"):
        with pytest.raises(ValueError, match="--slab"):
            parse_slab(bad)


def test_slabs_group_thin_slices_and_name_the_middle_one():
    rows = pd.DataFrame(
        {
            "image_id": [f"1.2.{k}" for k in range(17)],
            "source": [f"/d/{k}.dcm" for k in range(17)],
            "kind": "dicom",
            "z": 0.625 * np.arange(17),
        }
    )
    slabs = make_slabs(rows, 8)
    assert slabs["slab_slices"].tolist() == [8, 9]  # a last 1-slice group joins the one before
    assert slabs["image_id"].tolist() == ["1.2.4", "1.2.12"]
    assert slabs["z"].tolist() == pytest.approx([0.625 * 3.5, 0.625 * 12])
    assert json.loads(slabs["slab_sources"][0]) == [f"/d/{k}.dcm" for k in range(8)]
    assert slabs["slab_ids"][1].split() == [f"1.2.{k}" for k in range(8, 17)]


def test_a_slab_is_the_mean_of_its_slices(study):
    from ichdet.data.windows import resize_image, to_uint8, window_stack
    from ichdet.dicom.read import read_hu

    settings = CacheSettings(size=32)
    paths = [str(p) for p in study[6][:4]]
    mean = np.mean([read_hu(p) for p in paths], axis=0).astype(np.float32)
    expected = to_uint8(window_stack(resize_image(mean, 32), settings.windows))
    np.testing.assert_array_equal(slab_stack(json.dumps(paths), settings), expected)
    assert not np.array_equal(
        slab_stack(json.dumps(paths), settings), dicom_stack(paths[0], settings)
    )


def test_a_thin_series_alone_is_read_as_slabs(model, study, tmp_path):
    folder = subset(study, tmp_path / "s", [6])
    with quiet_pydicom():
        thin_ids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study[6]}
    result = predict(load_runner([model]), folder, tmp_path / "o")
    slices = result.slices
    m = int(slices["slab_slices"].iloc[0])
    n = len(study[6])
    assert m > 1 and len(slices) == n // m + (n % m >= m / 2)  # a short last group joins
    assert set(slices["image_id"]) <= thin_ids  # named by real instances
    covered = [i for ids in slices["slab_ids"] for i in ids.split()]
    assert sorted(covered) == sorted(thin_ids)  # every thin slice in exactly one slab
    assert f"mm slabs ({m} slices each)" in result.studies["notes"][0]
    off = predict(
        load_runner([model]), folder, tmp_path / "off", selection=SelectionOptions(slab="off")
    )
    assert len(off.slices) == len(study[6]) and "slab_ids" not in off.slices


def test_the_image_check_on_phantoms(study):
    head = check_series([str(p) for p in study[2]])
    assert head.head and not head.sharp and not head.problems()
    bone = check_series([str(p) for p in study[3]])
    assert bone.sharp and bone.problems()[0].startswith("bone kernel on the image")
    chest = check_series([str(p) for p in study[8]])
    assert not chest.head and chest.skull_ring < 0.7


def test_the_index_lists_objects_that_are_no_ct_slice(study, tmp_path):
    folder = subset(study, tmp_path / "s", [2, 997])
    index, errors, report = build_index(folder)
    (other,) = report["other_objects"]
    assert other["series_id"] not in set(index["series_id"])
    assert other["study_id"] == index["study_id"].iloc[0] and "modality is SR" in other["reason"]
    assert errors["reason"].str.contains("modality is SR").any()  # still listed, as before


def test_the_service_shows_a_study_that_cannot_be_read_apart(model, study, tmp_path):
    import time

    from fastapi.testclient import TestClient

    from ichdet.serve.app import Settings, create_app

    settings = Settings(store=tmp_path / "store", allowed_hosts=("testserver",))
    app = create_app(load_runner([model]), settings)
    files = [("files", ("upload", p.read_bytes(), "application/dicom")) for p in study[3]]
    with TestClient(app) as client:
        study_id = client.post("/api/v1/studies", files=files).json()["id"]
        deadline = time.time() + 60
        while (body := client.get(f"/api/v1/studies/{study_id}").json())["status"] != "done":
            assert time.time() < deadline and body["status"] != "failed", body
            time.sleep(0.05)
        assert body["assessable"] is False and body["not_assessable"] == "only bone-kernel series"
        assert "probabilities" not in body and body["slices"] == []
        assert body["series"][0]["reason"].startswith("bone kernel (BONE)")
        (item,) = client.get("/api/v1/studies").json()["items"]
        assert item["assessable"] is False and "probabilities" not in item
        assert client.get(f"/api/v1/studies/{study_id}/slices/0.png").status_code == 404
        page = client.get(f"/api/v1/studies/{study_id}/report")
        assert page.status_code == 200 and "NOT ASSESSABLE: only bone-kernel series" in page.text


def test_pre_windowed_images_and_series_without_positions_are_read(model, tmp_path):
    """A folder of PNGs (no header to judge) and a DICOM series without geometry are read,
    the latter with a note; neither is refused for "too few slices" or "coverage"."""
    import cv2

    folder = tmp_path / "png"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"img{k}.png"), np.full((48, 48, 3), 60 * k, np.uint8))
    result = predict(load_runner([model]), folder, tmp_path / "o")
    assert (result.studies["status"] == "assessed").all() and len(result.slices) == 3
    index = pd.DataFrame(
        {
            "image_id": [f"1.2.{k}" for k in range(10)],
            "study_id": "1.2",
            "series_id": "1.2.1",
            "source": [f"/x/{k}.dcm" for k in range(10)],
            "kind": "dicom",
            "z": np.nan,
        }
    )
    plan = plan_reads(index, [], SelectionOptions(image_check=False))
    assert plan.studies["status"][0] == "assessed"
    assert "no slice positions" in plan.studies["notes"][0]


def test_the_series_command_shows_what_predict_would_read(study, tmp_path):
    folder = subset(study, tmp_path / "s", [1, 2, 3, 997])
    out = cli.invoke(app, ["series", str(folder), "-o", str(tmp_path / "series.csv")])
    assert out.exit_code == 0, out.output
    assert "#2 HEAD 5mm" in out.output and "bone kernel (BONE)" in out.output
    table = pd.read_csv(tmp_path / "series.csv")
    assert table.loc[table["read"], "series_number"].tolist() == [2]
    bone = cli.invoke(app, ["series", str(subset(study, tmp_path / "b", [1, 3]))])
    assert "NOT ASSESSABLE (only bone-kernel series)" in bone.output
