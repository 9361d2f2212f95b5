"""Patient-grouped, label-stratified K-fold assignment.

scikit-learn's StratifiedGroupKFold takes one class per sample; with six co-occurring and very
imbalanced labels it can leave a fold without any positive (seen on small sets). Instead, whole
patients are placed greedily, rarest labels first, each into the fold where it raises the
normalised label load least (total slices count as a label, so folds also come out even-sized).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ichdet.labels import LABELS, STUDY_LABELS


def patient_groups(df: pd.DataFrame) -> pd.Series:
    """``patient_id``, or ``study_id`` where the patient is unknown."""
    return df["patient_id"].where(df["patient_id"].fillna("") != "", df["study_id"])


def assign_folds(df: pd.DataFrame, k: int, seed: int = 0) -> pd.Series:
    """Fold 0..k-1 for labelled rows (a slice label or a study label), -1 for the rest.
    Patients never straddle folds.

    Deterministic for a seed (the seed only breaks ties between equivalent patients). Study
    labels count once per study; an index with slice labels only gets the folds it always got.
    """
    if k < 2:
        raise ValueError("folds must be >= 2")
    folds = pd.Series(-1, index=df.index, dtype=np.int64)
    names = [n for n in (*LABELS, *STUDY_LABELS) if n in df]
    labelled = df[df[names].notna().any(axis=1)] if names else df.iloc[:0]
    if labelled.empty:
        return folds
    groups = patient_groups(labelled)
    slice_names = [n for n in LABELS if n in labelled and labelled[n].notna().any()]
    counts = labelled[slice_names].fillna(0).astype(float).groupby(groups.to_numpy()).sum()
    study_names = [n for n in STUDY_LABELS if n in labelled and labelled[n].notna().any()]
    if study_names:
        per_study = labelled.groupby("study_id")[study_names].first().fillna(0)
        patient_of = labelled.groupby("study_id")["patient_id"].first()
        per_study.index = patient_groups(
            pd.DataFrame({"patient_id": patient_of, "study_id": per_study.index})
        ).to_numpy()
        counts = counts.join(per_study.groupby(level=0).sum(), how="outer").fillna(0)
    counts["slices"] = groups.value_counts()
    if len(counts) < k:
        raise ValueError(f"{len(counts)} patients cannot fill {k} folds")
    totals = counts.sum()
    totals = totals[totals > 0]
    loads = counts[totals.index].to_numpy() / totals.to_numpy()  # share of each total
    rarity = np.argsort(np.argsort(totals.to_numpy(), kind="stable"), kind="stable")
    present = np.where(loads > 0, rarity[None, :], len(rarity))
    rng = np.random.default_rng(seed)
    tie = rng.permutation(len(counts))
    # rarest label carried first, then the patients with the most of it
    order = np.lexsort((tie, -loads.max(axis=1), present.min(axis=1)))
    fold_load = np.zeros((k, loads.shape[1]))
    assignment = np.empty(len(counts), dtype=np.int64)
    for p in order:
        cost = ((fold_load + loads[p]) ** 2).sum(axis=1) - (fold_load**2).sum(axis=1)
        best = int(np.argmin(cost + 1e-9 * rng.random(k)))
        assignment[p] = best
        fold_load[best] += loads[p]
    by_patient = pd.Series(assignment, index=counts.index)
    folds.loc[labelled.index] = groups.map(by_patient).to_numpy()
    return folds
