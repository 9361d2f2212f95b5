"""``ichdet validate`` end to end: a tiny model predicts a synthetic site, then validation
against the RSNA-form truth and against a CQ500-layout reads file; site thresholds fitted and
used by ``predict --site``; the report in Chromium."""

import json
import shutil

import pandas as pd
import pydicom
import pytest
from serve_fixtures import build_model_and_studies
from typer.testing import CliRunner

from ichdet.cli import app
from ichdet.evaluation.reference import CQ500
from ichdet.synth.studies import synthesize

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
cli = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(model, the site's DICOM folder, its truth, a predict folder of it)."""
    root = tmp_path_factory.mktemp("validate")
    model, _ = build_model_and_studies(root / "model")
    synthesize(root / "site", studies=12, seed=11, size=48, test_fraction=1.0)
    data = root / "site" / "stage_2_test"
    done = cli.invoke(app, ["predict", str(model), str(data), "-o", str(root / "pred")])
    assert done.exit_code == 0, done.output
    return model, data, root / "site" / "stage_2_test_labels.csv", root / "pred"


def _reads(pred, truth_file, path):
    """CQ500's layout from the truth: R1 and R2 agree with it, R3 misses every positive."""
    slices = pd.read_csv(pred / "slices.csv", dtype=str)
    studies = pd.read_csv(pred / "studies.csv", dtype=str, keep_default_na=False)
    long = pd.read_csv(truth_file)
    long[["image_id", "label"]] = long["ID"].str.rsplit("_", n=1, expand=True)
    long["study_id"] = long["image_id"].map(slices.set_index("image_id")["study_id"])
    truth = long.pivot_table(index="study_id", columns="label", values="Label", aggfunc="max")
    # one scan per patient, as in CQ500 (the phantoms' patients have several studies)
    studies["patient_id"] = [f"CQ500-CT-{k}" for k in range(len(studies))]
    studies.to_csv(path.with_name("studies.csv"), index=False)
    names = studies.set_index("study_id")["patient_id"]
    table = {"name": names.loc[truth.index].to_numpy(), "Category": "B1"}
    for reader in ("R1", "R2", "R3"):
        for code, label in CQ500.items():
            reads = truth[label].to_numpy()
            table[f"{reader}:{code}"] = reads * 0 if reader == "R3" else reads
    pd.DataFrame(table).to_csv(path, index=False)
    return truth


def test_validate_against_the_rsna_truth_and_fit_site_thresholds(site, tmp_path):
    model, data, truth, pred = site
    out = tmp_path / "val"
    args = ["validate", str(pred), str(truth), "--out", str(out), "--model", str(model)]
    args += ["--bootstrap", "200", "--fit-site", str(tmp_path / "site.json")]
    done = cli.invoke(app, [*args, "--target-sensitivity", "1.0"])
    assert done.exit_code == 0, done.output
    assert "joined on study_id" in done.output and "AUC (95% CI)" in done.output
    result = json.loads((out / "validation.json").read_text())  # strict JSON: no NaN
    assert result["studies"]["joined"] == 12 and result["thresholds"]["source"] == "model"
    anyone = result["labels"]["any"]
    point = anyone["operating_point"]
    assert point["tp"] + point["fn"] == anyone["positives"] > 0
    assert point["tp"] + point["fp"] + point["tn"] + point["fn"] == anyone["studies"] == 12
    assert {"brier", "ece", "slope", "intercept"} <= set(anyone["calibration"])
    assert set(result["subgroups"]) == {"manufacturer", "thickness", "kernel"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "http" not in html.replace("http-", "")
    fitted = json.loads((tmp_path / "site.json").read_text())
    assert fitted["model_digest"] and fitted["labels"]["any"]["sensitivity"] == 1.0
    site_pred = tmp_path / "site-pred"
    args = ["predict", str(model), str(data), "-o", str(site_pred)]
    dicom = ["--dicom-out", str(tmp_path / "dicom")]
    done = cli.invoke(app, [*args, "--site", str(tmp_path / "site.json"), *dicom])
    assert done.exit_code == 0, done.output
    sr = pydicom.dcmread(next((tmp_path / "dicom").rglob("sr_0.dcm")))
    params = [
        i.TextValue
        for i in sr.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == "111002"
    ]
    assert "thresholds: site (site.json" in params[0]  # the SR names the thresholds used
    studies = pd.read_csv(site_pred / "studies.csv")
    expected = studies["any"] >= fitted["labels"]["any"]["threshold"]
    assert (studies["any_flag"].astype(bool) == expected).all()
    manifest = json.loads((site_pred / "manifest.json").read_text())
    assert manifest["thresholds_from"].startswith("site (site.json")
    fitted["model_digest"] = "another-model"
    (tmp_path / "other.json").write_text(json.dumps(fitted))
    done = cli.invoke(app, [*args, "--site", str(tmp_path / "other.json")])
    assert done.exit_code != 0 and "not this one" in done.output


def test_validate_against_three_readers_in_the_cq500_layout(site, tmp_path):
    model, _, truth_file, pred = site
    truth = _reads(pred, truth_file, tmp_path / "reads.csv")
    out = tmp_path / "val"
    args = ["validate", str(tmp_path / "studies.csv"), str(tmp_path / "reads.csv"), "-o", str(out)]
    done = cli.invoke(app, [*args, "--bootstrap", "100", "--model", str(model)])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "validation.json").read_text())
    assert result["joined_on"] == "patient_id" and result["reference_standard"] == "majority"
    assert result["labels"]["any"]["positives"] == int(truth["any"].sum())  # R1 + R2 win
    readers = result["readers"]["labels"]["any"]["readers"]
    assert readers["R1"]["sensitivity"]["value"] == 1.0
    assert readers["R3"]["sensitivity"]["value"] == 0.0
    assert readers["R3"]["specificity"]["value"] == 1.0
    fleiss = result["readers"]["labels"]["any"]["fleiss_kappa"]
    assert fleiss is not None and fleiss < 1.0
    done = cli.invoke(app, [*args, "--reference", "R3", "--model", str(model)])
    assert done.exit_code == 0, done.output  # one reader as the standard: R3 saw nothing
    alone = json.loads((out / "validation.json").read_text())["labels"]["any"]
    assert alone["positives"] == 0 and alone["auc"]["value"] is None and "undefined" in done.output


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")
def test_the_report_renders_in_chromium_without_external_resources(site, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    model, _, truth, pred = site
    out = tmp_path / "val"
    args = ["validate", str(pred), str(truth), "--out", str(out), "--model", str(model)]
    assert cli.invoke(app, [*args, "--bootstrap", "100"]).exit_code == 0
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
        )
        page.goto((out / "report.html").as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 3 and min(widths) > 300
        assert page.locator("table").count() >= 5
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not outside and (tmp_path / "report.png").stat().st_size > 50_000


def test_validate_predicts_a_dicom_folder_first_and_takes_a_thresholds_file(site, tmp_path):
    model, data, truth, _ = site
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"labels": {k: 0.5 for k in CQ500.values()}}))
    out = tmp_path / "val"
    args = ["validate", str(data), str(truth), "-o", str(out), "--model", str(model)]
    done = cli.invoke(app, [*args, "--bootstrap", "50", "--thresholds", str(thresholds)])
    assert done.exit_code == 0, done.output
    assert (out / "predict" / "studies.csv").is_file()
    result = json.loads((out / "validation.json").read_text())
    assert result["thresholds"] == {
        "source": "thresholds.json",
        "values": {k: 0.5 for k in CQ500.values()},
    }
    done = cli.invoke(app, ["validate", str(data), str(truth), "-o", str(out)])
    assert done.exit_code != 0 and "give --model" in done.output
