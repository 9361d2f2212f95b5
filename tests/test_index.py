import shutil
import zipfile

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from ichdet.data.cache import (
    FORMATS,
    CacheSettings,
    cache_dir,
    cache_key,
    entry_path,
    read_entry,
)
from ichdet.data.dataset import SliceDataset, neighbour_rows
from ichdet.data.index import build_index, read_long_labels, split_from_path, write_index
from ichdet.data.prepare import prepare
from ichdet.data.windows import parse_windows
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.labels import LABELS, SUBTYPES
from ichdet.reports.eda import run_eda
from ichdet.synth.studies import synthesize

SMALL = CacheSettings(size=32)
FMT = SMALL.format


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    synthesize(root / "data", studies=14, seed=5, size=48, workers=1)
    return root / "data"


@pytest.fixture(scope="module")
def index(kaggle):
    df, errors, report = build_index(kaggle, folds=3, workers=1)
    return df, errors, report


def _truth(csv):
    wide, _ = read_long_labels(csv.read_text())
    return wide


def test_labels_join_exactly(kaggle, index):
    df, errors, report = index
    assert errors.empty and report["images_without_labels"] == 0
    assert report["labels_without_images"] == 0
    truth = _truth(kaggle / "stage_2_train.csv")
    train = df[df["split"] == "train"].set_index("image_id")
    assert sorted(train.index) == sorted(truth.index)
    np.testing.assert_array_equal(train.loc[truth.index, list(LABELS)].to_numpy(), truth.to_numpy())
    test = df[df["split"] == "test"]
    assert test[list(LABELS)].isna().all().all() and (test["fold"] == -1).all()
    assert len(test) == len(list((kaggle / "stage_2_test").glob("*.dcm")))


def test_index_columns_and_series_order(index):
    df, _, _ = index
    for column in [
        "image_id",
        "study_id",
        "series_id",
        "patient_id",
        "z",
        "split",
        "source",
        *LABELS,
        "fold",
    ]:
        assert column in df.columns
    for _, group in df.groupby(["study_id", "series_id"]):
        assert (np.diff(group["z"].to_numpy()) > 0).all()
        assert group["slice_index"].tolist() == list(range(len(group)))


def test_folds_group_patients_and_are_deterministic(kaggle, index):
    df, _, _ = index
    train = df[df["split"] == "train"]
    assert set(train["fold"]) == {0, 1, 2}
    assert (train.groupby("patient_id")["fold"].nunique() == 1).all()
    assert all(train[train["fold"] == f]["any"].sum() > 0 for f in range(3))
    again, _, _ = build_index(kaggle, folds=3, workers=2)
    pd.testing.assert_series_equal(df["fold"], again["fold"])


def test_zip_read_in_place_gives_the_same_index(kaggle, index, tmp_path):
    archive = tmp_path / "rsna-intracranial-hemorrhage-detection.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # Kaggle's zip has one top-level folder
        for path in sorted(kaggle.rglob("*")):
            if path.is_file():
                zf.write(path, "rsna/" + path.relative_to(kaggle).as_posix())
    from_zip, errors, _ = build_index(archive, folds=3, workers=2)
    assert errors.empty
    assert from_zip["source"].str.contains("::rsna/stage_2_").all()
    cols = [c for c in index[0].columns if c != "source"]
    pd.testing.assert_frame_equal(from_zip[cols], index[0][cols])
    # prepare reads zip members too, and gives the same pixels
    d_zip, written, _, _ = prepare(from_zip.head(4), tmp_path / "cz", SMALL)
    d_dir, _, _, _ = prepare(index[0].head(4), tmp_path / "cd", SMALL)
    assert written == 4
    for image_id in from_zip.head(4)["image_id"]:
        np.testing.assert_array_equal(
            read_entry(entry_path(d_zip, image_id, FMT), FMT, 3),
            read_entry(entry_path(d_dir, image_id, FMT), FMT, 3),
        )


def test_stage1_names_and_labels_reports(kaggle, tmp_path):
    root = tmp_path / "stage1"
    shutil.copytree(kaggle / "stage_2_train", root / "stage_1_train_images")
    shutil.copytree(kaggle / "stage_2_test", root / "stage_1_test_images")
    text = (kaggle / "stage_2_train.csv").read_text()
    text += "".join(f"ID_notanimage_{name},0\n" for name in LABELS)
    text += "".join(line + "\n" for line in text.splitlines()[1:7])  # repeated rows
    (root / "stage_1_train.csv").write_text(text)
    victim = sorted((root / "stage_1_train_images").glob("*.dcm"))[0]
    victim.unlink()
    df, _, report = build_index(root)
    assert report["labels_without_images"] == 2  # the deleted file, and the extra id
    assert report["labels_csv"]["duplicate_rows"] >= 6
    assert set(df["split"]) == {"train", "test"}


def test_bad_files_are_listed_not_fatal(kaggle, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(kaggle / "stage_2_test", root / "study")
    (root / "study" / "junk.dcm").write_text("hello")
    good = sorted((root / "study").glob("ID_*.dcm"))[0]
    (root / "study" / "cut.dcm").write_bytes(good.read_bytes()[:200])
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "study" / "mr.dcm")
    rgb = ct_dataset(np.zeros((8, 8), np.int16))
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation = 3, "RGB"
    save_dataset(rgb, root / "study" / "rgb.dcm")
    (root / "notes.txt").write_text("not an image, silently ignored")
    df, errors, _ = build_index(root, workers=2)
    reasons = dict(
        zip(errors["source"].map(lambda s: s.split("/")[-1]), errors["reason"], strict=True)
    )
    assert set(reasons) == {"junk.dcm", "cut.dcm", "mr.dcm", "rgb.dcm"}
    assert "not a DICOM" in reasons["junk.dcm"] and "modality is MR" in reasons["mr.dcm"]
    assert "colour" in reasons["rgb.dcm"]
    assert len(df) == len(list((kaggle / "stage_2_test").glob("*.dcm")))
    assert (df["split"] == "test").all()  # no labels: everything is for prediction
    out = write_index(df, errors, {}, tmp_path / "ix" / "index.parquet")
    assert len(pd.read_csv(tmp_path / "ix" / "index.errors.csv")) == 4 and out.is_file()


def test_prepare_resumable_and_keyed_by_settings(index, tmp_path):
    df = index[0].head(10)
    d1, written, existing, errors = prepare(df, tmp_path, SMALL, workers=1)
    assert (written, existing, len(errors)) == (10, 0, 0)
    _, written, existing, _ = prepare(df, tmp_path, SMALL, workers=2)
    assert (written, existing) == (0, 10)
    entry_path(d1, df["image_id"].iloc[3], FMT).unlink()
    _, written, existing, _ = prepare(df, tmp_path, SMALL)
    assert (written, existing) == (1, 9)
    other = [
        CacheSettings(size=40),
        CacheSettings(size=32, windows=parse_windows("brain,bone")),
        CacheSettings(size=32, format="npy"),
        CacheSettings(size=32, format="png"),
        CacheSettings(size=32, window_kind="sigmoid"),
    ]
    assert len({cache_dir(tmp_path, s) for s in [SMALL, *other]}) == 6
    d2, written, _, _ = prepare(df, tmp_path, other[1])
    assert written == 10 and read_entry(
        entry_path(d2, df["image_id"].iloc[0], FMT), FMT, 2
    ).shape == (2, 32, 32)
    assert not list(tmp_path.rglob("*.tmp"))


def test_prepare_matches_windows_of_resized_hu(index, tmp_path):
    from ichdet.data.windows import resize_image, to_uint8, window_stack
    from ichdet.dicom.read import read_slice

    row = index[0].iloc[0]
    for fmt in FORMATS:
        settings = CacheSettings(size=32, format=fmt)
        d, _, _, _ = prepare(index[0].head(1), tmp_path, settings)
        cached = read_entry(entry_path(d, row["image_id"], fmt), fmt, 3)
        expected = to_uint8(window_stack(resize_image(read_slice(row["source"]).hu, 32)))
        np.testing.assert_array_equal(cached, expected)


def test_dataset_context_and_labels(index, tmp_path):
    df = index[0][index[0]["split"] == "train"]
    d, _, _, _ = prepare(df, tmp_path, SMALL)
    ds = SliceDataset(df, d, context=1)
    assert ds.channels == 9 and len(ds) == len(df)
    i = 5
    x, y = ds[i]
    assert x.shape == (9, 32, 32) and x.dtype.__str__() == "torch.uint8"
    np.testing.assert_array_equal(y.numpy(), df.iloc[i][list(LABELS)].to_numpy(dtype=np.float32))
    rows = neighbour_rows(ds.index, 1)[i]
    same_series = ds.index.iloc[rows]["series_id"].nunique() == 1
    assert same_series and list(ds.index.iloc[rows]["slice_index"]) == [
        ds.index.iloc[i]["slice_index"] - 1,
        ds.index.iloc[i]["slice_index"],
        ds.index.iloc[i]["slice_index"] + 1,
    ]
    np.testing.assert_array_equal(x[:3].numpy(), ds.image(int(rows[0])))
    first = int(np.flatnonzero(ds.index["slice_index"] == 0)[0])
    assert neighbour_rows(ds.index, 1)[first][0] == first  # clamped at the series end
    # a missing entry is dropped, not fatal
    entry_path(d, df["image_id"].iloc[0], FMT).unlink()
    assert len(SliceDataset(df, d)) == len(df) - 1


def test_png_folder_with_wide_labels(tmp_path):
    root = tmp_path / "pngs"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        gray = rng.integers(0, 255, (40, 40), dtype=np.uint8)
        img = gray if i % 2 else np.stack([gray, gray // 2, 255 - gray], axis=-1)
        cv2.imwrite(str(root / f"img{i}.png"), img)
        rows.append(
            {
                "image": f"img{i}",
                "patient_id": f"p{i // 2}",
                "subdural": i % 3 == 0,
                "any": i % 3 == 0,
            }
        )
    pd.DataFrame(rows).astype({"subdural": int, "any": int}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    df, errors, _ = build_index(root, labels=tmp_path / "labels.csv", folds=3)
    assert errors.empty and len(df) == 6 and (df["split"] == "train").all()
    assert df.set_index("image_id").loc["img3", "subdural"] == 1
    assert df["epidural"].isna().all()  # not given, stays unknown
    assert (df.groupby("patient_id")["fold"].nunique() == 1).all()
    d, written, _, errors = prepare(df, tmp_path / "cache", SMALL)
    assert written == 6 and errors.empty
    rows = df.set_index("image_id")
    gray = read_entry(
        entry_path(d, cache_key("img1", rows.at["img1", "source"], "image"), FMT), FMT, 3
    )
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grayscale fills channels
    colour = read_entry(
        entry_path(d, cache_key("img0", rows.at["img0", "source"], "image"), FMT), FMT, 3
    )
    assert not (colour[0] == colour[2]).all()


def test_split_from_path():
    assert split_from_path("/d/stage_2_train/ID_1.dcm") == "train"
    assert split_from_path("/d/stage_1_test_images/ID_1.dcm") == "test"
    assert split_from_path("k.zip::rsna/stage_2_test/ID_1.dcm") == "test"
    assert split_from_path("/data/patient7/ID_1.dcm") is None
    assert split_from_path("/data/contest/ID_1.dcm") is None


def test_eda_writes_figures(index, tmp_path):
    files = run_eda(index[0], tmp_path / "eda")
    for name in ("prevalence", "cooccurrence", "slices_per_study", "position", "examples"):
        assert files[name].is_file() and files[name].stat().st_size > 5000
    summary = files["summary"].read_text()
    counts = index[0][index[0]["split"] == "train"][list(SUBTYPES)].sum()
    assert f"| epidural | {int(counts['epidural'])} |" in summary
    with pytest.raises(ValueError, match="no labelled"):
        run_eda(index[0][index[0]["split"] == "test"], tmp_path / "eda2")


def _damage_member(archive, index, where):
    """Flip 64 compressed bytes of member ``index``: near its start or near its end."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[index]
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename)  # local header, then the data
    at = start + 40 if where == "start" else start + info.compress_size - 200
    for i in range(at, at + 64):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    return info.filename


def test_damaged_zip_members_are_listed_not_fatal(kaggle, tmp_path):
    files = sorted((kaggle / "stage_2_test").glob("*.dcm"))[:4]
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, f"stage_2_test/{path.name}")
    header_hit = _damage_member(archive, 0, "start")
    pixel_hit = _damage_member(archive, 2, "end")
    df, errors, _ = build_index(archive)
    assert errors["source"].str.endswith(header_hit).tolist() == [True]
    assert "unreadable zip member" in errors["reason"].iloc[0]
    assert len(df) == 3  # the member damaged in its pixels still has a readable header
    _, written, _, failed = prepare(df, tmp_path / "cache", SMALL)
    assert written == 2 and failed["source"].str.endswith(pixel_hit).tolist() == [True]
    assert "unreadable zip member" in failed["reason"].iloc[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_cache_format_round_trips_exactly_and_writably(fmt):
    from ichdet.data.cache import decode, encode

    stack = np.random.default_rng(1).integers(0, 256, (3, 24, 40), dtype=np.uint8)
    back = decode(encode(stack, fmt), fmt, 3)
    np.testing.assert_array_equal(back, stack)
    assert back.flags.writeable  # torch.from_numpy needs a writable array


def test_a_damaged_zstd_entry_is_an_error_not_garbage():
    from ichdet.data.cache import decode, encode

    data = encode(np.zeros((3, 16, 16), np.uint8), "zstd")
    with pytest.raises(ValueError, match="corrupt zstd cache entry"):
        decode(data[:-3], "zstd", 3)
    with pytest.raises(ValueError, match="no header"):
        decode(b"nonsense", "zstd", 3)


def test_prepare_reads_rows_without_pandas(index, tmp_path):
    import subprocess
    import sys

    df, errors, report = index
    path = write_index(df.head(3), errors, report, tmp_path / "index.parquet")
    code = (
        "import sys; from ichdet.data.prepare import read_rows; "
        f"rows = read_rows({str(path)!r}); print(len(rows), rows[0][2], 'pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "dicom", "False"]
