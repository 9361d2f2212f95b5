"""``ichdet eda``: figures and a short summary of an index's labels (the write-up's EDA).

Writes PNGs (label prevalence, subtype co-occurrence, slices per study, positives by position in
the series, example slices per subtype in three windows) and ``summary.md`` into a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ichdet.data.windows import DEFAULT_WINDOWS, PRESETS, window_stack  # noqa: E402
from ichdet.dicom.read import DicomError, read_hu  # noqa: E402
from ichdet.dicom.sources import read_source  # noqa: E402
from ichdet.labels import LABELS, SUBTYPES  # noqa: E402
from ichdet.reports.viz import composite_rgb, save_figure  # noqa: E402
from ichdet.util.atomic import write_text  # noqa: E402


def labelled(index: pd.DataFrame) -> pd.DataFrame:
    return index[index["any"].notna()].astype({name: int for name in LABELS})


def prevalence_figure(df: pd.DataFrame, out: Path) -> Path:
    counts = df[list(LABELS)].sum()
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(LABELS, counts.values, color=["#8c564b"] * 5 + ["#d62728"])
    for bar, value in zip(bars, counts.values, strict=True):
        ax.annotate(
            f"{value}\n{value / len(df):.1%}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("positive slices")
    ax.set_title(f"Label prevalence ({len(df)} labelled slices)")
    ax.tick_params(axis="x", rotation=20)
    ax.margins(y=0.2)
    return save_figure(fig, out)


def cooccurrence(df: pd.DataFrame) -> pd.DataFrame:
    """Counts of slices positive for both subtypes (diagonal: for the subtype itself)."""
    m = df[list(SUBTYPES)].to_numpy()
    return pd.DataFrame(m.T @ m, index=SUBTYPES, columns=SUBTYPES)


def cooccurrence_figure(df: pd.DataFrame, out: Path) -> Path:
    table = cooccurrence(df)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(np.log1p(table.to_numpy()), cmap="Reds")
    for i in range(len(SUBTYPES)):
        for j in range(len(SUBTYPES)):
            ax.text(j, i, str(table.iat[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(5), SUBTYPES, rotation=30, ha="right")
    ax.set_yticks(range(5), SUBTYPES)
    ax.set_title("Subtype co-occurrence (slices)")
    return save_figure(fig, out)


def slices_per_study_figure(index: pd.DataFrame, out: Path) -> Path:
    sizes = index.groupby("study_id").size()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(sizes.values, bins=min(40, max(5, sizes.nunique())), color="#1f77b4")
    ax.set_xlabel("slices per study")
    ax.set_ylabel("studies")
    ax.set_title(f"{len(sizes)} studies, median {sizes.median():.0f} slices")
    return save_figure(fig, out)


def position_profile(df: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """Prevalence of each label by relative position in its series (0 = lowest slice)."""
    rel = df["slice_index"] / (df["series_slices"] - 1).clip(lower=1)
    cut = np.minimum((rel * bins).astype(int), bins - 1)
    return df.groupby(cut)[list(LABELS)].mean()


def position_figure(df: pd.DataFrame, out: Path) -> Path:
    profile = position_profile(df)
    fig, ax = plt.subplots(figsize=(7, 4))
    centers = (profile.index + 0.5) / len(profile)
    for name in LABELS:
        ax.plot(centers, profile[name], marker="o", label=name, lw=2 if name == "any" else 1)
    ax.set_xlabel("relative position in series (0 = bottom, 1 = top)")
    ax.set_ylabel("fraction positive")
    ax.legend(fontsize=8)
    ax.set_title("Positives by position in the series")
    return save_figure(fig, out)


def examples_figure(df: pd.DataFrame, out: Path, seed: int = 0) -> Path | None:
    """One example slice per subtype (a slice with only that subtype if there is one)."""
    dicoms = df[df["kind"] == "dicom"]
    picks: list[tuple[str, pd.Series]] = []
    rng = np.random.default_rng(seed)
    for name in SUBTYPES:
        pos = dicoms[dicoms[name] == 1]
        only = pos[pos[list(SUBTYPES)].sum(axis=1) == 1]
        pool = only if len(only) else pos
        if len(pool):
            picks.append((name, pool.iloc[int(rng.integers(len(pool)))]))
    if not picks:
        return None
    windows = [PRESETS[w] for w in DEFAULT_WINDOWS]
    fig, axes = plt.subplots(len(picks), 4, figsize=(11, 2.9 * len(picks)), squeeze=False)
    for r, (name, row) in enumerate(picks):
        try:
            stack = window_stack(read_hu(read_source(row["source"])), windows)
        except (DicomError, ValueError):
            continue
        panels = [*stack, composite_rgb(stack)]
        titles = [f"{w.name} {w.center:g}/{w.width:g}" for w in windows] + ["composite"]
        for c, (img, title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title if r == 0 else "", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{name}\n{row['image_id']}", fontsize=9)
    fig.suptitle("Example slices per subtype")
    return save_figure(fig, out)


def run_eda(index: pd.DataFrame, out: str | os.PathLike) -> dict[str, Path]:
    """Write the figures and summary.md into ``out``; returns name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = labelled(index)
    if df.empty:
        raise ValueError("the index has no labelled images; EDA needs labels")
    files = {
        "prevalence": prevalence_figure(df, out / "prevalence.png"),
        "cooccurrence": cooccurrence_figure(df, out / "cooccurrence.png"),
        "slices_per_study": slices_per_study_figure(index, out / "slices_per_study.png"),
        "position": position_figure(df, out / "position.png"),
    }
    examples = examples_figure(df, out / "examples.png")
    if examples:
        files["examples"] = examples
    counts = df[list(LABELS)].sum()
    lines = [
        "# ichdet EDA",
        "",
        f"- labelled slices: {len(df)}; studies: {df['study_id'].nunique()}; "
        f"patients: {df['patient_id'].nunique()}",
        f"- unlabelled (test) slices: {len(index) - len(df)}",
        f"- slices per study: median {index.groupby('study_id').size().median():.0f}",
        "",
        "| label | positive slices | prevalence |",
        "|---|---|---|",
        *[f"| {n} | {int(counts[n])} | {counts[n] / len(df):.2%} |" for n in LABELS],
        "",
        "Subtype co-occurrence (slices positive for both):",
        "",
        *_markdown_table(cooccurrence(df)),
        "",
        *[f"![{name}]({path.name})" for name, path in files.items()],
        "",
    ]
    files["summary"] = write_text(out / "summary.md", "\n".join(lines))
    return files


def _markdown_table(table: pd.DataFrame) -> list[str]:
    lines = ["| | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(table.index, table.to_numpy(), strict=True)
    ]
    return lines
