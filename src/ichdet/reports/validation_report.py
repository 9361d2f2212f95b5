"""``ichdet validate``'s report.html: one self-contained page (plots embedded as PNG data URIs,
no external resource) with what was validated, the figures per label, calibration, the readers
beside the model, subgroups and every failure."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ichdet.evaluation.validate import Validation
from ichdet.labels import LABELS
from ichdet.reports.validation_plots import distribution_plot, reliability_plot, roc_plot
from ichdet.util.atomic import write_text

STYLE = """
body { font-family: sans-serif; margin: 20px; max-width: 1250px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.banner { background: #eef; padding: 4px 8px; }
.warning { background: #fdd; padding: 6px 8px; font-weight: bold; }
.small { color: #a50; }
img { max-width: 100%; }
"""


def num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def ci(figure: dict[str, Any], digits: int = 3) -> str:
    if figure["value"] is None or math.isnan(figure["value"]):
        return "undefined"
    if figure["low"] is None or math.isnan(figure["low"]):
        return num(figure["value"], digits)
    return f"{figure['value']:.{digits}f} ({figure['low']:.{digits}f}-{figure['high']:.{digits}f})"


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def label_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for label in LABELS:
        f = result["labels"][label]
        point = f["operating_point"]
        rows.append(
            [
                label,
                str(f["studies"]),
                str(f["positives"]),
                ci(f["auc"]),
                num(f["average_precision"]),
                ci(point["sensitivity"]),
                ci(point["specificity"]),
                ci(point["ppv"]),
                ci(point["npv"]),
                f"{point['tp']}/{point['fp']}/{point['tn']}/{point['fn']}",
                num(f["sensitivity_at_specificity"]["0.9"]),
                num(f["specificity_at_sensitivity"]["0.9"]),
            ]
        )
    return rows


LABEL_HEAD = [
    "label", "studies", "positives", "AUC (95% CI)", "AP", "sensitivity", "specificity", "PPV",
    "NPV", "TP/FP/TN/FN", "sens @ spec 0.90", "spec @ sens 0.90",
]  # fmt: skip


KEYS = ("brier", "ece", "slope", "intercept")


def _calibration(result: dict[str, Any]) -> str:
    rows = [
        [label, *(num(result["labels"][label]["calibration"][k]) for k in KEYS)] for label in LABELS
    ]
    return _table(["label", "Brier", "ECE (10 bins)", "slope", "intercept"], rows)


def _readers(result: dict[str, Any]) -> str:
    readers = result["readers"]
    if not readers:
        return "<p>One reference read per study: no reader comparison.</p>"
    names = list(next(iter(readers["labels"].values()))["readers"])
    head = ["label", "Fleiss kappa (readers)"]
    head += [f"{r} sens / spec / kappa with model" for r in names]
    rows = []
    for label, per in readers["labels"].items():
        row = [label, num(per["fleiss_kappa"])]
        for r in names:
            f = per["readers"][r]
            row.append(
                f"{num(f['sensitivity']['value'])} / {num(f['specificity']['value'])} / "
                f"{num(f['model_kappa'])}"
            )
        rows.append(row)
    standard = html.escape(readers["standard"])
    return f"<p>Reference standard: {standard}.</p>" + _table(head, rows)


def _subgroups(result: dict[str, Any]) -> str:
    rows = []
    for column, groups in result["subgroups"].items():
        for name, g in groups.items():
            mark = " (small)" if g["small"] else ""
            rows.append(
                [
                    f"{column}: {name}{mark}",
                    str(g["studies"]),
                    str(g["positives"]),
                    ci(g["auc"]),
                    ci(g["sensitivity"]),
                ]  # fmt: skip
            )
    head = ["subgroup (label any)", "studies", "positives", "AUC (95% CI)", "sensitivity"]
    return _table(head, rows) if rows else "<p>No subgroup column in the predictions.</p>"


def _failures(result: dict[str, Any], links: dict[str, str]) -> str:
    items = result["failures"]
    if not items:
        return "<p>None at the operating point.</p>"
    rows = []
    for f in items:
        sid = html.escape(f["study_id"])
        link = links.get(f["study_id"])
        name = f"<a href='{html.escape(link)}'>{sid}</a>" if link else sid
        probs = ", ".join(f"{k[:5]} {num(v, 2)}" for k, v in f["probabilities"].items())
        rows.append(
            f"<tr><td>{name}</td><td>{f['label']}</td><td>{f['kind']}</td>"
            f"<td>{f['probability']:.3f}</td><td>{f['threshold']:.3g}</td><td>{probs}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("study", "label", "kind", "p", "threshold", "all"))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _header(v: Validation, about: dict[str, Any]) -> str:
    r = v.result
    studies = r["studies"]
    lines = [
        ("model", about.get("model", "?")),
        ("model digest", about.get("digest", "?")),
        ("trained on", about.get("trained_on", "?")),
        ("software", f"ichdet {about.get('version', '?')}"),
        ("reference", f"{about.get('reference', '?')} ({r['reference_standard']})"),
        ("joined on", r["joined_on"]),
        ("studies", f"{studies['joined']} joined, {studies['assessed']} assessed, "
                    f"{len(studies['not_assessable'])} not assessable"),
        ("only predicted / only in the reference",
         f"{len(studies['only_predicted'])} / {len(studies['only_reference'])}"),
        ("study dates", about.get("dates", "unknown")),
        ("scanners", about.get("sites", "unknown")),
        ("thresholds", f"{r['thresholds']['source']}"),
        ("bootstrap", f"{r['bootstrap']['rounds']} resamples of studies, seed "
                      f"{r['bootstrap']['seed']}; Wilson 95 % intervals at the threshold"),
    ]  # fmt: skip
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(val))}</td></tr>" for k, val in lines
    )
    one_side = "".join(
        f"<details><summary>{html.escape(name)} ({len(ids)})</summary>"
        f"<p>{html.escape(', '.join(ids))}</p></details>"
        for name, ids in (
            ("only predicted", studies["only_predicted"]),
            ("only in the reference", studies["only_reference"]),
            ("not assessable", studies["not_assessable"]),
        )
        if ids
    )
    return f"<table>{rows}</table>{one_side}"


def write_report(
    v: Validation, path: Path, about: dict[str, Any], links: dict[str, str] | None = None
) -> Path:
    warning = about.get("warning", "")
    banner = f"<p class='warning'>WARNING: {html.escape(warning)}</p>" if warning else ""
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ichdet validation</title>
<style>{STYLE}</style></head><body>
<p class="banner">Research use only: not for diagnostic use.</p>{banner}
<h1>Validation of ichdet on {v.result["studies"]["joined"]} studies</h1>
<h2>What was validated</h2>{_header(v, about)}
<h2>Per label (studies as the unit)</h2>{_table(LABEL_HEAD, label_rows(v.result))}
<h2>ROC curves</h2><img alt="ROC curves" src="{roc_plot(v)}">
<h2>Calibration</h2>{_calibration(v.result)}
<img alt="reliability diagram" src="{reliability_plot(v)}">
<h2>Probabilities of positives and negatives</h2>
<img alt="probability distributions" src="{distribution_plot(v)}">
<h2>Readers and the model</h2>{_readers(v.result)}
<h2>Subgroups</h2>{_subgroups(v.result)}
<h2>Failures at the operating point</h2>{_failures(v.result, links or {})}
</body></html>
"""
    return write_text(path, body)
