"""The HU-rule baseline (``ichdet.evaluation.hu_rule``) on phantoms whose blood is known."""

import dataclasses

import numpy as np

from ichdet.evaluation.hu_rule import candidates, score_volume
from ichdet.synth.head import Pose
from ichdet.synth.lesions import Lesion
from ichdet.synth.phantom import Grid, plan_study, render_slice


def _study(lesions, seed=4):
    plan = plan_study(np.random.default_rng(seed), 128, positive=False)
    plan.head = dataclasses.replace(plan.head, pose=Pose())
    plan.confounders = dataclasses.replace(plan.confounders, calcifications=(), clip=None)
    plan.lesions = lesions
    grid = Grid.for_plan(plan)
    return plan, [render_slice(plan, k, grid) for k in range(plan.n_slices)]


def test_the_rule_measures_a_fresh_bleed_and_ignores_a_normal_head():
    normal, slices = _study([])
    empty = score_volume([hu for hu, _ in slices], normal.spacing, normal.thickness)
    h = normal.head
    bleed = Lesion(
        "intraparenchymal",
        hu=72.0,
        age="hyperacute",
        site="lobar",
        center=(0.3 * h.a, 0.0, 0.25 * h.c),
        radius=15.0,
    )
    plan, slices = _study([bleed])
    found = score_volume([hu for hu, _ in slices], plan.spacing, plan.thickness)
    truth_ml = sum(m["intraparenchymal"].sum() for _, m in slices if m) * plan.spacing**2
    truth_ml *= plan.thickness / 1000
    assert empty.volume_ml < 0.3 * found.volume_ml  # dense falx and sinuses: a little
    assert 0.5 * truth_ml < found.volume_ml <= 1.2 * truth_ml
    peak = int(np.argmax(found.slice_area_mm2))
    assert "intraparenchymal" in slices[peak][1]  # the profile peaks on a slice with the bleed


def test_no_closed_skull_no_candidates():
    hu = np.full((64, 64), 70.0, np.float32)  # blood density everywhere, but no bone around it
    assert not candidates(hu, 1.0).any()
    hu[10:54, 10:54] = 1000.0
    hu[14:50, 14:50] = 70.0  # a closed ring: only the pixels >= 5 mm from bone count
    inside = candidates(hu, 1.0)
    rows = np.nonzero(inside.any(axis=1))[0]
    assert inside.any() and rows.min() == 18 and rows.max() == 45  # 5 px from rows 13 and 50
