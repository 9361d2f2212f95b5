"""Hostile and broken inputs (issue 10): no code runs, nothing escapes, hangs, or vanishes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichdet.data.cache import CacheSettings, cache_key, entry_path, read_entry
from ichdet.data.index import build_index, write_index
from ichdet.data.prepare import prepare, prepare_rows
from ichdet.dicom.read import DicomError, read_hu, read_meta, read_slice
from ichdet.dicom.sources import read_source, split_source
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.models.checkpoint import load_checkpoint
from ichdet.util.limits import limits
from ichdet.util.names import path_component
from ichdet.util.parallel import WORKER_DIED
from ichdet.util.tables import safe_cell, write_frame

SMALL = CacheSettings(size=16)
FORKS = multiprocessing.get_start_method() == "fork"


@pytest.fixture(autouse=True)
def fresh_limits():
    limits.cache_clear()
    yield
    limits.cache_clear()


def _ct(path: Path, value: int = 100, **kwargs) -> Path:
    stored = np.full((16, 16), value, np.int16)
    return save_dataset(ct_dataset(stored, **kwargs), path)


class Payload:
    """Pickles into a call that leaves a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------- code execution


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    from ichdet.models.slice_cnn import ModelConfig, build_model

    marker = tmp_path / "pwned"
    torch.save({"ichdet": 1, "model": {}, "evil": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        build_model(ModelConfig(name="test_efficientnet"), weights=tmp_path / "evil.pt")
    assert not marker.exists()


def test_bad_model_files_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from ichdet.cli import app

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    _ct(tmp_path / "in" / "a.dcm")
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path / "junk.pt"), str(tmp_path / "in"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "not a valid checkpoint" in result.output and "Traceback" not in result.output


def test_a_foreign_onnx_file_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from ichdet.inference.runners import OnnxRunner

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="not an ichdet model"):
        OnnxRunner(tmp_path / "foreign.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxRunner(tmp_path / "garbage.onnx")


# ------------------------------------------------------------------ paths from file contents


@pytest.mark.parametrize("uid", ["../../../x", "/abs/path", "", "a" * 300, "1.2/3", "..", "é"])
def test_header_strings_never_become_paths(uid):
    name = path_component(uid)
    assert "/" not in name and name not in ("", ".", "..") and len(name) <= 64
    assert name.startswith("_")  # hashed: never equal to a kept name


def test_plain_ids_are_kept_and_lookalikes_do_not_collide():
    assert path_component("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert path_component("ID_3fa8d4b2c") == "ID_3fa8d4b2c"
    assert path_component("1.2/3") != path_component("1.2_3")


def test_a_hostile_sop_uid_stays_inside_the_cache(tmp_path):
    _ct(tmp_path / "data" / "a.dcm", sop_instance_uid="../../escaped")
    df, errors, _ = build_index(tmp_path / "data")
    assert df["image_id"].tolist() == ["../../escaped"]
    directory, written, _, _ = prepare(df, tmp_path / "cache", SMALL)
    assert written == 1
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".zstd"]
    assert len(files) == 1 and directory in files[0].parents


def test_two_image_folders_do_not_share_cache_entries(tmp_path):
    import cv2

    for folder, value in (("a", 50), ("b", 200)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "0001.png"), np.full((8, 8), value, np.uint8))
    for folder in ("a", "b"):
        df, _, _ = build_index(tmp_path / folder)
        directory, written, _, _ = prepare(df, tmp_path / "cache", SMALL)
        assert written == 1  # b's 0001.png is not mistaken for a's
    for folder, value in (("a", 50), ("b", 200)):
        key = cache_key("0001", str(tmp_path / folder / "0001.png"), "image")
        assert (read_entry(entry_path(directory, key, "zstd"), "zstd", 3) == value).all()


# -------------------------------------------------------------------------- memory and hangs


def test_slices_over_the_pixel_cap_are_refused_before_decoding(tmp_path, monkeypatch):
    path = _ct(tmp_path / "a.dcm")
    monkeypatch.setenv("ICHDET_MAX_PIXELS", str(15 * 15))
    limits.cache_clear()
    for read in (read_slice, read_hu, read_meta):
        with pytest.raises(DicomError, match="16 x 16 pixels is over the 225-pixel cap"):
            read(path)


def test_zip_members_and_files_over_the_size_cap_are_refused(tmp_path, monkeypatch):
    path = _ct(tmp_path / "a.dcm")
    with zipfile.ZipFile(tmp_path / "d.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(path, "stage_2_test/a.dcm")
    monkeypatch.setenv("ICHDET_MAX_FILE_MB", str(100 / 2**20))  # 100 bytes
    limits.cache_clear()
    with pytest.raises(ValueError, match="over the 100-byte cap"):
        read_source(f"{tmp_path / 'd.zip'}::stage_2_test/a.dcm")
    with pytest.raises(DicomError, match="over the 100-byte cap"):
        read_slice(path)
    _, errors, _ = build_index(tmp_path / "d.zip")
    assert errors["reason"].str.contains("over the 100-byte cap").all()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_among_the_inputs_is_listed_not_read(tmp_path):
    _ct(tmp_path / "data" / "a.dcm")
    os.mkfifo(tmp_path / "data" / "pipe.dcm")
    os.symlink("/dev/zero", tmp_path / "data" / "zero.dcm")
    code = (
        "from ichdet.data.index import build_index; "
        f"df, e, _ = build_index({str(tmp_path / 'data')!r}); "
        "print(len(df)); print(sorted(e['reason']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    count, reasons = out.stdout.splitlines()
    assert count == "1" and "FIFO" in reasons and "character device" in reasons
    with pytest.raises(ValueError, match="FIFO"):
        read_source(str(tmp_path / "data" / "pipe.dcm"))


def _files(tmp_path: Path, n: int) -> pd.DataFrame:
    for i in range(n):
        _ct(tmp_path / "data" / f"s{i}.dcm", value=10 * i, instance_number=i + 1)
    df, _, _ = build_index(tmp_path / "data")
    return df


@pytest.mark.skipif(not FORKS, reason="the poison is planted by patching before a fork")
def test_a_worker_that_dies_in_prepare_costs_one_file(tmp_path, monkeypatch):
    import ichdet.data.prepare as prep

    df = _files(tmp_path, 12)
    poison = df["source"].iloc[5]
    real = prep.dicom_stack

    def deadly(source, settings):
        if source == poison:
            os._exit(1)  # what an OOM kill or a decoder segfault looks like to the pool
        return real(source, settings)

    monkeypatch.setattr(prep, "dicom_stack", deadly)
    rows = list(df[["image_id", "source", "kind"]].itertuples(index=False, name=None))
    _, written, _, failed = prepare_rows(rows, tmp_path / "cache", SMALL, workers=2)
    assert written == 11 and failed == [(df["image_id"].iloc[5], poison, WORKER_DIED)]


@pytest.mark.skipif(not FORKS, reason="the poison is planted by patching before a fork")
def test_a_worker_that_dies_in_index_costs_one_file(tmp_path, monkeypatch):
    import ichdet.data.index as index_module

    df = _files(tmp_path, 12)
    poison = df["source"].iloc[3]
    real = index_module.read_meta

    def deadly(stream, **kw):
        if getattr(stream, "name", "") == poison:
            os._exit(1)
        return real(stream, **kw)

    monkeypatch.setattr(index_module, "read_meta", deadly)
    again, errors, _ = build_index(tmp_path / "data", workers=2)
    assert len(again) == 11 and errors.values.tolist() == [[poison, WORKER_DIED]]


@pytest.mark.skipif(not FORKS, reason="the poison is planted by patching before a fork")
def test_a_worker_that_dies_while_predicting_costs_one_file(tmp_path, monkeypatch):
    import ichdet.inference.decode as decode

    df = _files(tmp_path, 10)
    rows = list(df[["image_id", "source", "kind"]].itertuples(index=False, name=None))
    poison = rows[4][1]
    real = decode.dicom_stack

    def deadly(source, settings):
        if source == poison:
            os._exit(1)
        return real(source, settings)

    monkeypatch.setattr(decode, "dicom_stack", deadly)
    chunks = decode.series_chunks(rows, context=1, size=3)
    results = list(decode.decode_ahead(chunks, SMALL, 1, workers=2, depth=2))
    ids = [i for r in results for i in r[0]]
    errors = [e for r in results for e in r[2]]
    assert ids == [r[0] for r in rows if r[1] != poison]
    assert errors == [(poison, WORKER_DIED)]


def test_series_are_decoded_in_bounded_chunks_with_the_same_inputs(tmp_path):
    from ichdet.inference.decode import chunk_inputs, series_chunks, series_inputs

    df = _files(tmp_path, 9)
    rows = list(df[["image_id", "source", "kind"]].itertuples(index=False, name=None))
    chunks = series_chunks(rows, context=2, size=4)
    assert [c.keep_to - c.keep_from for c in chunks] == [4, 4, 1]
    assert max(len(c.rows) for c in chunks) <= 4 + 2 * 2
    whole_ids, whole, _ = series_inputs(rows, SMALL, 2)
    parts = [chunk_inputs(c, SMALL, 2) for c in chunks]
    assert [i for p in parts for i in p[0]] == whole_ids
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole)


# ------------------------------------------------------------------ silent loss, wrong values


def test_of_two_files_with_one_uid_the_readable_one_is_kept(tmp_path):
    good = _ct(tmp_path / "data" / "b_good.dcm", sop_instance_uid="1.2.3.4")
    bad = tmp_path / "data" / "a_truncated.dcm"
    bad.write_bytes(good.read_bytes()[:-100])  # same header, pixel data cut short
    df, errors, _ = build_index(tmp_path / "data")
    assert df["source"].tolist() == [str(good)]
    assert errors.values.tolist() == [[str(bad), f"duplicate image id 1.2.3.4; kept {good}"]]


def test_every_input_file_is_indexed_or_listed(tmp_path):
    dicom = _ct(tmp_path / "a.dcm", sop_instance_uid="1.2.3.1")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("./stage_2_test/a.dcm"), dicom.read_bytes())  # leading ./
        zf.write(dicom, "stage_2_test/named.txt")  # DICOM behind a non-DICOM suffix
        zf.writestr("stage_2_test/notes.txt", "hello")
        zf.writestr("stage_2_test/.hidden.dcm", "x")
    df, errors, report = build_index(tmp_path / "d.zip")
    assert sorted(s.split("::")[1] for s in df["source"]) == ["./stage_2_test/a.dcm"]
    listed = set(errors["source"].str.split("::").str[1]) | {
        s.split("::")[1] for s in report["not_images"]
    }
    assert listed == {
        "stage_2_test/named.txt",
        "stage_2_test/notes.txt",
        "stage_2_test/.hidden.dcm",
    }
    assert "duplicate image id 1.2.3.1" in " ".join(errors["reason"])  # named.txt was read
    assert report["files"] == 4 and df["split"].tolist() == ["test"]


def test_a_file_name_with_the_zip_separator_is_a_plain_file(tmp_path):
    path = _ct(tmp_path / "a::b.dcm")
    assert split_source(str(path)) == (str(path), None)
    df, errors, _ = build_index(tmp_path)
    assert df["source"].tolist() == [str(path)] and errors.empty


def test_header_oddities_end_as_errors_or_right_values(tmp_path):
    path = tmp_path / "no_intercept.dcm"
    ds = ct_dataset(np.zeros((8, 8), np.int16))
    del ds.RescaleIntercept
    save = save_dataset(ds, path)
    with pytest.raises(DicomError, match="without RescaleIntercept"):
        read_slice(save)
    ds = ct_dataset(np.zeros((8, 8), np.int16))
    del ds.ImagePositionPatient
    ds.SliceLocation = "0.0"
    assert read_meta(save_dataset(ds, tmp_path / "loc0.dcm")).z == 0.0
    ds = ct_dataset(np.zeros((8, 8), np.uint16), photometric="MONOCHROME1", intercept=0)
    values = np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = values.tobytes()
    ds["PixelData"].VR = "OB"
    hu = read_slice(save_dataset(ds, tmp_path / "m1_32.dcm")).hu
    np.testing.assert_allclose(hu, (2**32 - 1 - values).astype(np.float32))


def test_formula_cells_are_neutralised(tmp_path):
    assert safe_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert [safe_cell(v) for v in ("+1", "-2.5", "@SUM", "ID_1", 3)] == [
        "+1",
        "-2.5",
        "'@SUM",
        "ID_1",
        3,
    ]
    write_frame(tmp_path / "t.csv", pd.DataFrame({"study_id": ["=1+2", "1.2.3"], "p": [0.5, -1.0]}))
    assert (tmp_path / "t.csv").read_text().splitlines()[1:] == ["'=1+2,0.5", "1.2.3,-1.0"]


def test_index_files_are_never_stale_beside_new_ones(tmp_path):
    df = _files(tmp_path, 2)
    out = write_index(df, pd.DataFrame(columns=["source", "reason"]), {}, tmp_path / "ix.parquet")
    (tmp_path / "ix.errors.csv").write_text("stale")
    with pytest.raises(RuntimeError), pytest.MonkeyPatch.context() as mp:
        mp.setattr(pd.DataFrame, "to_parquet", lambda *a, **k: (_ for _ in ()).throw(RuntimeError))
        write_index(df, pd.DataFrame(columns=["source", "reason"]), {"new": 1}, out)
    assert not out.exists()  # no old index left beside the new errors/report


def test_damaged_cache_entries_are_redone(tmp_path):
    df = _files(tmp_path, 3)
    directory, _, _, _ = prepare(df, tmp_path / "cache", SMALL)
    keys = [cache_key(i) for i in df["image_id"]]
    entry_path(directory, keys[0], "zstd").write_bytes(b"")  # emptied by a crash
    cut = entry_path(directory, keys[1], "zstd")
    cut.write_bytes(cut.read_bytes()[:-5])  # cut short
    _, written, _, _ = prepare(df, tmp_path / "cache", SMALL)
    assert written == 1  # the empty one, found by its size
    rows = list(df[["image_id", "source", "kind"]].itertuples(index=False, name=None))
    _, written, _, _ = prepare_rows(rows, tmp_path / "cache", SMALL, verify=True)
    assert written == 1  # the truncated one, found by decoding
    from ichdet.data.dataset import SliceDataset

    cut.write_bytes(cut.read_bytes()[:-5])
    dataset = SliceDataset(df, directory)
    with pytest.raises(ValueError, match="prepare --verify"):
        dataset[1]


@pytest.mark.skipif(not FORKS, reason="only forked workers inherit the parent's objects")
def test_workers_never_run_destructors_of_inherited_objects(tmp_path):
    """A live ONNX Runtime session left as cyclic garbage in the parent (a failed load leaves
    one) hung forked workers whose gc collected it: its destructor waits for threads that were
    not forked (seen in `make test`). Workers must never finalise what they inherited."""
    code = f"""
import gc, os
from ichdet.util.parallel import map_chunks

class Inherited:
    def __del__(self):
        open({str(tmp_path / "finalised")!r}, "a").write(str(os.getpid()) + "\\n")

gc.disable()
garbage = Inherited()
garbage.cycle = garbage
del garbage  # cyclic garbage that exists when the workers fork

def work(items):
    gc.collect()
    return items

print(map_chunks(work, list(range(6)), workers=2, max_chunk=1))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[0, 1, 2, 3, 4, 5]"
    assert not (tmp_path / "finalised").exists()  # no worker ran the parent's destructor
