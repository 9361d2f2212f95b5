"""The plots of a validation report (matplotlib, returned as PNG data URIs): ROC per label with
its bootstrap band and the operating point, the reliability diagram, and the probability
distributions of positives and negatives."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ichdet.evaluation import validation_stats as vs  # noqa: E402
from ichdet.evaluation.validate import Validation, label_arrays  # noqa: E402
from ichdet.labels import LABELS  # noqa: E402

GRID = np.linspace(0, 1, 101)


def _uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def roc_plot(v: Validation) -> str:
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for k, (label, ax) in enumerate(zip(LABELS, axes.flat, strict=True)):
        _, y, p = label_arrays(v.joined, v.assessed, label)
        ax.plot([0, 1], [0, 1], color="#bbb", lw=1)
        ax.set_title(label)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        if not vs.both_classes(y):
            ax.text(0.5, 0.5, "undefined\n(one class only)", ha="center", va="center")
            continue
        rounds = min(v.options.bootstrap, 500)  # the band needs fewer draws than the CI
        draws = vs.bootstrap_indices(len(y), rounds, v.options.seed + k)
        low, high = vs.roc_band(y, p, draws, GRID)
        ax.fill_between(GRID, low, high, color="#9ecae1", alpha=0.6, label="95 % band")
        fpr, tpr, _ = roc_curve(y, p)
        figures = v.result["labels"][label]
        auc = figures["auc"]
        ax.plot(fpr, tpr, color="#08519c", label=f"AUC {auc['value']:.3f}")
        point = figures["operating_point"]
        ax.plot(
            1 - point["specificity"]["value"],
            point["sensitivity"]["value"],
            "o",
            color="#d62728",
            label=f"threshold {point['threshold']:.3g}",
        )
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _uri(fig)


def reliability_plot(v: Validation) -> str:
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], color="#bbb", lw=1, label="calibrated")
    for label in LABELS:
        bins = v.result["labels"][label]["calibration"].get("bins")
        if bins and bins["predicted"]:
            ax.plot(bins["predicted"], bins["observed"], "o-", label=label, ms=4)
    ax.set_xlabel("mean predicted probability (10 equal-count bins)")
    ax.set_ylabel("observed frequency")
    ax.legend(fontsize=8)
    return _uri(fig)


def distribution_plot(v: Validation) -> str:
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    edges = np.linspace(0, 1, 21)
    for label, ax in zip(LABELS, axes.flat, strict=True):
        _, y, p = label_arrays(v.joined, v.assessed, label)
        ax.hist(p[y == 0], bins=edges, alpha=0.6, label=f"negatives ({int(np.sum(y == 0))})")
        ax.hist(p[y == 1], bins=edges, alpha=0.6, label=f"positives ({int(np.sum(y == 1))})")
        ax.axvline(v.thresholds[label], color="#d62728", lw=1)
        ax.set_title(label)
        ax.set_xlabel("probability")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _uri(fig)
