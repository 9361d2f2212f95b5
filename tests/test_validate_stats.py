"""The figures of ``ichdet validate`` against known answers and the field's libraries (scipy's
Wilson interval, statsmodels' Fleiss kappa, scikit-learn), on generated data."""

import math

import numpy as np
import pandas as pd
import pytest

from ichdet.evaluation import validation_stats as vs
from ichdet.evaluation.reference import ReferenceError, join, read_reference
from ichdet.evaluation.validate import ValidateOptions, run_validation
from ichdet.labels import LABELS


def test_auc_perfect_inverted_ties_and_undefined():
    y = np.array([0, 0, 1, 1])
    assert vs.auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert vs.auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert vs.auc(y, np.full(4, 0.5)) == 0.5
    assert math.isnan(vs.auc(np.zeros(4, int), np.linspace(0, 1, 4)))  # no positives
    value, low, high = vs.auc_ci(np.zeros(4, int), np.linspace(0, 1, 4), np.zeros((5, 4), int))
    assert math.isnan(value) and math.isnan(low) and math.isnan(high)
    assert math.isnan(vs.average_precision(np.zeros(3, int), np.ones(3)))


def test_bootstrap_ci_is_reproducible_and_brackets_the_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.normal(0.35, 0.2, 200), 0, 1)
    draws = vs.bootstrap_indices(200, 500, seed=4)
    first, again = vs.auc_ci(y, p, draws), vs.auc_ci(y, p, vs.bootstrap_indices(200, 500, 4))
    assert first == again
    value, low, high = first
    assert low < value < high and high - low < 0.2


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (47, 50), (1, 1)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    value, low, high = vs.wilson(k, n)
    expected = binomtest(k, n).proportion_ci(method="wilson")
    assert value == pytest.approx(k / n)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert all(math.isnan(v) for v in vs.wilson(0, 0))


def test_confusion_and_fixed_operating_points():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.05, 0.0])
    point = vs.confusion(y, p, 0.5)
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (3, 1, 5, 1)
    assert point["sensitivity"]["value"] == 0.75 and point["ppv"]["value"] == 0.75
    assert math.isnan(vs.confusion(y, p, 2.0)["ppv"]["value"])  # nothing called: undefined
    # specificity >= 5/6 allows one false positive: thresholds 0.6 -> sensitivity 3/4
    assert vs.sensitivity_at_specificity(y, p, 0.8) == 0.75
    assert vs.sensitivity_at_specificity(y, p, 1.0) == 0.5
    assert vs.specificity_at_sensitivity(y, p, 1.0) == pytest.approx(4 / 6)
    assert vs.threshold_for_sensitivity(y, p, 0.75) == 0.6


def test_calibration_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 20000)
    logit = np.log(p / (1 - p))
    y = (rng.uniform(size=p.size) < 1 / (1 + np.exp(-(0.5 + 2.0 * logit)))).astype(int)
    found = vs.calibration(y, p)
    assert found["slope"] == pytest.approx(2.0, abs=0.1)
    assert found["intercept"] == pytest.approx(0.5, abs=0.1)
    calibrated = (rng.uniform(size=p.size) < p).astype(int)
    fair = vs.calibration(calibrated, p)
    assert fair["slope"] == pytest.approx(1.0, abs=0.06) and fair["ece"] < 0.02
    assert fair["brier"] == pytest.approx(np.mean((p - calibrated) ** 2))
    sm = pytest.importorskip("statsmodels.api")
    fit = sm.Logit(y, sm.add_constant(logit)).fit(disp=0)
    assert (found["intercept"], found["slope"]) == pytest.approx(tuple(fit.params), abs=1e-4)


def test_ece_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    # two equal-count bins: (0.2 vs 0) and (0.7 vs 1): ECE = 0.5 * 0.2 + 0.5 * 0.3
    assert vs.calibration(y, p, bins=2)["ece"] == pytest.approx(0.25)


def test_kappas_match_statsmodels():
    statsmodels = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 60)
    ratings = np.stack([np.where(rng.uniform(size=60) < 0.15, 1 - truth, truth) for _ in range(3)])
    table, _ = statsmodels.aggregate_raters(ratings.T)
    assert vs.fleiss_kappa(ratings.T) == pytest.approx(statsmodels.fleiss_kappa(table))
    assert vs.cohen_kappa(truth, truth) == 1.0
    assert math.isnan(vs.cohen_kappa(np.ones(5), np.ones(5)))


def _cq500(path, readers):
    """A reads file in CQ500's published layout."""
    columns = {"name": [f"P{i}" for i in range(len(readers[0]))], "Category": "x"}
    codes = {"ICH": "any", "IPH": "intraparenchymal", "IVH": "intraventricular"}
    codes |= {"SDH": "subdural", "EDH": "epidural", "SAH": "subarachnoid"}
    for r, reads in enumerate(readers, start=1):
        for code in codes:
            columns[f"R{r}:{code}"] = reads
        columns[f"R{r}:Fracture"] = 0
    pd.DataFrame(columns).to_csv(path, index=False)


def test_readers_standards_and_unknown_cells(tmp_path):
    _cq500(tmp_path / "reads.csv", [[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 1]])
    majority = read_reference(tmp_path / "reads.csv", "majority")
    assert majority.truth["any"].tolist() == [1, 0, 0, 1] and majority.key == "patient_id"
    assert read_reference(tmp_path / "reads.csv", "any-reader").truth["any"].tolist() == [
        1,
        1,
        0,
        1,
    ]
    assert read_reference(tmp_path / "reads.csv", "R2").truth["any"].tolist() == [1, 0, 0, 1]
    with pytest.raises(ReferenceError, match="majority, any-reader, R1, R2, R3"):
        read_reference(tmp_path / "reads.csv", "R9")
    plain = tmp_path / "plain.csv"
    plain.write_text("study_id,any,subdural\nA,1,\nB,0,0\nB,1,1\n")
    with pytest.raises(ReferenceError, match="repeated.*lines 3, 4"):
        read_reference(plain)
    plain.write_text("study_id,any,subdural\nA,1,\nB,0,0\nC,yes,no\n")
    ref = read_reference(plain)
    assert math.isnan(ref.truth.at["A", "subdural"]) and ref.truth.at["C", "any"] == 1
    plain.write_text("study_id,any\nA,maybe\n")
    with pytest.raises(ReferenceError, match="line 2, any: 'maybe'"):
        read_reference(plain)


def _studies(ids, probs, **extra):
    rows = {"study_id": ids, "status": "assessed", **extra}
    for label in LABELS:
        rows[label] = probs
        rows[f"{label}_flag"] = [p >= 0.5 for p in probs]
    return pd.DataFrame(rows)


def test_join_says_which_column_and_who_is_on_one_side(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("patient_id,any\nP1,1\nP2,0\nP9,1\n")
    studies = _studies(["u1", "u2", "u3"], [0.9, 0.2, 0.5], patient_id=["P1", "P2", "P3"])
    joined = join(studies, read_reference(plain))
    assert joined.key == "patient_id" and list(joined.studies["study_id"]) == ["u1", "u2"]
    assert joined.only_predicted == ["P3"] and joined.only_reference == ["P9"]


def test_a_study_not_assessed_and_an_unknown_cell_are_left_out_of_that_label(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("study_id,any,subdural\nA,1,1\nB,0,\nC,1,0\nD,0,0\n")
    studies = _studies(list("ABCD"), [0.9, 0.1, 0.8, 0.3])
    studies.loc[2, "status"] = "not assessable"
    options = ValidateOptions(bootstrap=50)
    found = run_validation(studies, read_reference(plain), {}, "model", options).result
    assert found["labels"]["any"]["studies"] == 3  # C not assessed
    assert found["labels"]["subdural"]["studies"] == 2  # B unknown, C not assessed
    assert found["studies"]["not_assessable"] == ["C"]
    assert math.isnan(found["labels"]["epidural"]["auc"]["value"])  # no column: unknown


def test_site_calibration_is_cross_validated_and_applied():
    from ichdet.evaluation.site import apply_site, cross_validated, fit_site, platt

    rng = np.random.default_rng(5)
    p = rng.uniform(0.01, 0.99, 400)
    y = (rng.uniform(size=400) < p**3).astype(int)  # the model overcalls: calibration helps
    site = fit_site({k: (y, p) for k in LABELS}, 0.9, "digest-1", calibrate=True)
    cv = site["calibration"]["labels"]["any"]["cross_validated"]
    assert cv["brier_after"] < cv["brier_before"] and cv["ece_after"] < cv["ece_before"]
    shown = cross_validated(y, p)
    a, b = site["calibration"]["labels"]["any"]["a"], site["calibration"]["labels"]["any"]["b"]
    assert not np.allclose(shown, platt(p, a, b))  # out-of-fold, not the map fitted on all
    studies = _studies(["s1", "s2"], [0.2, 0.9])
    studies.loc[1, "status"] = "not assessable"
    site["thresholds"] = {k: v["threshold"] for k, v in site["labels"].items()}
    applied = apply_site(studies, site)
    assert applied.at[0, "any"] == pytest.approx(float(platt(np.array([0.2]), a, b)[0]))
    assert applied.at[0, "any_flag"] == (applied.at[0, "any"] >= site["thresholds"]["any"])
    assert applied.at[1, "any"] == 0.9  # not assessed: untouched
    assert site["labels"]["any"]["sensitivity"] >= 0.9


def test_a_site_file_belongs_to_one_model(tmp_path):
    import json

    from ichdet.evaluation.site import SiteError, fit_site, read_site

    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.7, 0.4, 0.9])
    site = fit_site({k: (y, p) for k in LABELS}, 1.0, "model-a")
    (tmp_path / "site.json").write_text(json.dumps(site))
    assert read_site(tmp_path / "site.json", "model-a")["thresholds"]["any"] == 0.7
    with pytest.raises(SiteError, match="not this one"):
        read_site(tmp_path / "site.json", "model-b")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SiteError, match="not a site file"):
        read_site(tmp_path / "bad.json", "model-a")


def test_rsna_long_form_needs_the_slices_and_refuses_repeats(tmp_path):
    long = tmp_path / "labels.csv"
    long.write_text("ID,Label\nID_a_any,1\nID_b_any,0\nID_a_any,0\n")
    slices = pd.DataFrame({"image_id": ["ID_a", "ID_b"], "study_id": ["S", "S"]})
    with pytest.raises(ReferenceError, match="lines 2, 4"):
        read_reference(long, slices=slices)
    long.write_text("ID,Label\nID_a_any,1\nID_b_any,0\nID_a_subdural,0\n")
    with pytest.raises(ReferenceError, match="slices.csv"):
        read_reference(long)
    ref = read_reference(long, slices=slices)
    assert ref.truth.at["S", "any"] == 1 and ref.truth.at["S", "subdural"] == 0
    assert math.isnan(ref.truth.at["S", "epidural"])
