"""The whole-head phantom: anatomy where it belongs, confounders never labelled, blood by age,
mass effect, pose and the scanner's rendering (``ichdet.synth``)."""

import dataclasses

import numpy as np
import pytest

from ichdet.synth import scanner as scan
from ichdet.synth.brain import Warp
from ichdet.synth.confounders import METAL_HU, Confounders
from ichdet.synth.head import Pose
from ichdet.synth.lesions import AGES, Lesion, draw_lesion
from ichdet.synth.phantom import Grid, plan_study, render_plane, render_slice, resliced

SIZE = 160


def _plan(seed=0, positive=False, **head):
    plan = plan_study(np.random.default_rng(seed), SIZE, positive=positive)
    plan.head = dataclasses.replace(plan.head, pose=Pose(), **head)  # upright, centred
    plan.spacing = 1.5
    return plan


def _plane(plan, z, warp=None):
    return render_plane(plan, Grid.for_plan(plan), z, warp or Warp())


def _pixel(plan, x, y):
    """(row, column) of head coordinates (mm) on an upright, centred plan's slice."""
    half = (plan.size - 1) / 2
    return int(round(y / plan.spacing + half)), int(round(x / plan.spacing + half))


def test_the_skull_base_has_air_next_to_bone_and_the_orbits_their_globes():
    plan = _plan()
    h = plan.head
    orbit = _plane(plan, -0.43 * h.c).hu
    for side in (-1, 1):
        globe = orbit[_pixel(plan, side * 0.47 * h.a, -h.b - 6)]
        assert 0 < globe < 20  # vitreous
        lens = orbit[_pixel(plan, side * 0.47 * h.a, -h.b - 15.5)]
        assert lens > 90
    sphenoid = _plane(plan, -0.66 * h.c).hu
    assert sphenoid[_pixel(plan, 0, -0.44 * h.b)] == -1000  # air inside the head
    ring = sphenoid[_pixel(plan, 0, -0.44 * h.b - 12.5)]
    assert ring > 500  # ... in a bony wall
    petrous = _plane(plan, -0.64 * h.c)
    rows, cols = np.nonzero(petrous.petrous)  # dense bone on both sides, behind the sella
    assert (cols < SIZE / 2 - 10).any() and (cols > SIZE / 2 + 10).any()
    assert petrous.hu[petrous.petrous].min() > 1000


def test_brain_slices_show_a_closed_skull_grey_white_ventricles_and_dura():
    plan = _plan(age=80.0)
    h = plan.head
    mid = _plane(plan, 0.1 * h.c)
    hu = mid.hu
    assert hu[_pixel(plan, 0, -h.b - h.skull / 2)] > 500  # frontal bone
    lateral = hu[_pixel(plan, h.ventricle[0] + 2.5, -0.06 * h.b)]
    assert abs(lateral - h.csf_hu) < 1e-3  # inside the left lateral ventricle
    values = np.unique(np.round(hu[(hu > 15) & (hu < 50)]))
    assert h.grey_hu.__round__() in values and h.white_hu.__round__() in values
    high = _plane(plan, 0.35 * h.c).hu
    row = high[_pixel(plan, 0, 0.3 * h.b)[0]]
    middle = row[SIZE // 2 - 2 : SIZE // 2 + 2]  # the falx, blended into the pixels it covers
    assert middle.max() > h.csf_hu + 15  # denser than the fissure's CSF around it


def test_age_widens_sulci_and_ventricles():
    young, old = _plan(3, age=20.0), _plan(3, age=90.0)
    csf = []
    for plan in (young, old):
        hu = _plane(plan, 0.1 * plan.head.c).hu
        csf.append(np.sum(np.abs(hu - plan.head.csf_hu) < 1e-3))
    assert csf[1] > 1.5 * csf[0]


def test_confounders_are_dense_but_never_labelled():
    plan = _plan(5)
    h = plan.head
    plan.confounders = Confounders(
        calcifications=((0.0, 0.12 * h.b, -0.12 * h.c, 3.0, 300.0),),
        clip=(12.0, -0.22 * h.b, -0.38 * h.c),
        dental=False,
        headrest=(5.0, 2.0, 300.0),
        motion=(0.0, 1.0, 3.0, 0.5),
        streaks=30.0,
    )
    grid = Grid.for_plan(plan)
    pineal = render_plane(plan, grid, -0.12 * h.c, Warp())
    assert pineal.hu[_pixel(plan, 0, 0.12 * h.b)] == 300.0
    clip = render_plane(plan, grid, -0.38 * h.c, Warp())
    assert (clip.hu == METAL_HU).any() and clip.metal.any()
    for k in range(plan.n_slices):
        hu, masks = render_slice(plan, k, grid)
        assert masks == {}
    top = 0.5 * h.c
    sinus = render_plane(plan, grid, top, Warp()).hu
    y = h.b * np.sqrt(1 - 0.5**2) - 2.0  # under the inner table, at the back of the midline
    assert sinus[_pixel(plan, 0, y)] == pytest.approx(h.venous_hu)  # superior sagittal sinus


def test_blood_density_follows_its_age_and_cells_settle_posteriorly():
    rng = np.random.default_rng(0)
    plan = _plan()
    seen = set()
    for _ in range(300):
        lesion = draw_lesion(rng, "subdural", plan.head)
        seen.add(lesion.age)
        low, high = AGES[lesion.age]
        assert low <= lesion.hu <= high
    assert seen == set(AGES)
    h = plan.head
    chronic = Lesion(
        "subdural",
        hu=15.0,
        age="chronic",
        site="convexity",
        direction=(1, 0, 0),
        angular_radius=1.0,
        thickness=10.0,
    )
    plan.lesions = [chronic]
    plane = _plane(plan, 0.1 * h.c)
    mask = plane.masks["subdural"]
    assert mask.any() and (plane.hu[mask] == 15.0).all()  # darker than brain, still labelled
    mixed = dataclasses.replace(chronic, hu=40.0, age="acute", hematocrit=80.0)
    plan.lesions = [mixed]
    plane = _plane(plan, 0.1 * h.c)
    rows = np.nonzero(plane.masks["subdural"])[0]
    front, back = rows < np.quantile(rows, 0.3), rows > np.quantile(rows, 0.8)
    values = plane.hu[plane.masks["subdural"]]
    assert values[back].mean() > 75 and values[front].mean() < 70


def test_a_large_bleed_shifts_the_midline_away_from_it():
    plan = _plan(7)
    h = plan.head
    big = Lesion(
        "intraparenchymal",
        hu=70.0,
        age="acute",
        site="lobar",
        center=(0.45 * h.a, -0.1 * h.b, 0.1 * h.c),
        radius=24.0,
    )
    plan.lesions = [big]
    warp = plan.warp
    assert warp.shift > 8 and warp.side == 1
    grid = Grid.for_plan(plan)
    z = 0.1 * h.c
    straight = render_plane(dataclasses.replace(plan, lesions=[]), grid, z, Warp())
    shifted = render_plane(plan, grid, z, warp)
    centre = []
    for plane in (straight, shifted):  # the centroid of the ventricles' CSF
        csf = np.abs(plane.hu - h.csf_hu) < 1e-3
        csf[:, : SIZE // 2 - 25] = csf[:, SIZE // 2 + 25 :] = False
        centre.append(np.nonzero(csf)[1].mean())
    assert abs(centre[0] - (SIZE - 1) / 2) < 1
    assert (centre[1] - centre[0]) * plan.spacing < -0.5 * warp.shift  # away from the bleed


def test_the_pose_turns_the_head_in_the_scanner():
    plan = _plan(9)
    h = plan.head
    turned = dataclasses.replace(plan, head=dataclasses.replace(h, pose=Pose(yaw=np.pi / 2)))
    a = _plane(plan, 0.3 * h.c).hu
    b = _plane(turned, 0.3 * h.c).hu
    inside = [np.count_nonzero(img > 1000, axis=ax).max() for img, ax in ((a, 0), (b, 1))]
    np.testing.assert_allclose(*inside, atol=3)

    # the long axis of the head lies along the rows before and along the columns after
    def extent(img, axis):
        return np.count_nonzero((img > -500).any(axis=axis))

    assert extent(a, 1) > extent(a, 0) and extent(b, 0) > extent(b, 1)


def test_thick_slices_average_three_planes():
    plan = _plan(11)
    plan.scanner = dataclasses.replace(
        plan.scanner, noise_hu=0.0, psf_mm=0.0, cupping=0.0, offset=0.0, curve=(0.0, 200.0, 0.0)
    )
    plan.confounders = dataclasses.replace(plan.confounders, motion=None)
    thick = resliced(plan, 20)
    assert thick.thickness >= 4
    grid = Grid.for_plan(thick)
    k = 10
    hu, _ = render_slice(thick, k, grid)
    z = thick.slice_z(k)
    planes = [
        render_plane(thick, grid, z + dz, thick.warp).hu
        for dz in (-thick.thickness / 3, 0, thick.thickness / 3)
    ]
    inside = grid.fov & (np.abs(hu) < 200)
    np.testing.assert_allclose(hu[inside], np.mean(planes, axis=0)[inside], atol=1e-3)


def test_the_scanner_curve_is_monotone_and_small():
    sc = scan.Scanner(
        psf_mm=0.0, noise_hu=0.0, grain_px=1.0, cupping=0.0, offset=3.0, curve=(3.0, 120.0, 1.0)
    )
    ramp = np.tile(np.linspace(-200, 300, 501, dtype=np.float32), (4, 1))
    out = scan.finish(sc, ramp, np.full(ramp.shape, 0.5, np.float32), 1.0, np.random.default_rng(0))
    assert (np.diff(out[0]) > 0).all()
    assert np.abs(out - ramp).max() <= 6.0 + 1e-3


def test_the_masks_hold_the_blood_painted_at_its_density():
    checked = 0
    for seed in range(12):
        plan = plan_study(np.random.default_rng(seed), 96, positive=True, lesion_count=1)
        (lesion,) = plan.lesions
        grid = Grid.for_plan(plan)
        for k in range(0, plan.n_slices, 3):
            plane = render_plane(plan, grid, plan.slice_z(k), plan.warp)
            mask = plane.masks.get(lesion.subtype)
            if mask is None:
                continue
            values = plane.hu[mask]
            densities = {np.float32(lesion.hu), np.float32(lesion.hematocrit or lesion.hu)}
            if lesion.age == "chronic":  # replaces the brain: exactly its densities
                assert set(np.unique(values)) <= densities
            else:  # over the brain: at least its density
                assert (values >= min(densities)).all()
            checked += 1
    assert checked > 10


def test_shapes_a_slice_misses_are_skipped_without_changing_a_pixel():
    from ichdet.synth.head import Coords, ellipsoid, tube

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-60, 60, 40), np.linspace(-60, 60, 40))
    skipped = 0
    for _ in range(200):
        tilt = rng.uniform(-0.3, 0.3)
        p = Coords(
            x.astype(np.float32),
            y.astype(np.float32),
            (rng.uniform(-40, 40) + tilt * y).astype(np.float32),
        )
        center, axes = tuple(rng.uniform(-40, 40, 3)), tuple(rng.uniform(2, 15, 3))
        q = ((p.x - center[0]) / axes[0]) ** 2 + ((p.y - center[1]) / axes[1]) ** 2
        q = q + ((p.z - center[2]) / axes[2]) ** 2
        for threshold in (0.88, 1.0, 1.15, 1.15**2):
            np.testing.assert_array_equal(ellipsoid(p, center, axes) < threshold, q < threshold)
        start, end, radius = tuple(rng.uniform(-40, 40, 3)), tuple(rng.uniform(-40, 40, 3)), 5.0
        s, e = np.array(start), np.array(end)
        t = np.clip(
            ((p.x - s[0]) * (e - s)[0] + (p.y - s[1]) * (e - s)[1] + (p.z - s[2]) * (e - s)[2])
            / float((e - s) @ (e - s)),
            0,
            1,
        )
        near = (p.x - s[0] - t * (e - s)[0]) ** 2 + (p.y - s[1] - t * (e - s)[1]) ** 2
        near = np.sqrt(near + (p.z - s[2] - t * (e - s)[2]) ** 2) < radius
        np.testing.assert_array_equal(tube(p, start, end, radius), near)
        skipped += p.misses(center[2] - 1.25 * axes[2], center[2] + 1.25 * axes[2])
    assert skipped > 20  # the shortcut was taken often enough to be tested
