"""Label-consistency refiner: reductions, gradients, convergence, covariance, input checks.

Scenes are `PlaneScene` street canyons ray cast at 160x120 (fast, no rendered world needed).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segloc_core.bench.scenes import PlaneScene, map_points_from_depth, oracle_levels
from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose, pose_error
from segloc_core.localize.lm import LMConfig
from segloc_core.localize.refine import (
    REDUCTION_NAMES,
    GaussianPrior,
    LabeledPoints,
    LevelInput,
    RefineConfig,
    _DirectSampler,
    _LevelObjective,
    _PixelMajorDirectSampler,
    _ReducedSampler,
    _search_grid,
    _translation_search,
    level_reductions,
    refine,
    refine_direct,
    refine_many,
)

K = 20
CAM = Camera("PINHOLE", 160, 120, [125.0, 125.0, 80.0, 60.0])
SIZES = ((40, 30), (80, 60), (160, 120))
T_QUERY = Pose.from_rotvec([0.0, 0.04, 0.0], [0.2, 0.0, -0.8])


@pytest.fixture(scope="module")
def scene_data():
    scene = PlaneScene(np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1.0]]),
                       np.array([1.5, -4.0, 4.0, 12.0]), 0.5,
                       np.random.default_rng(0).integers(0, K, size=(4, 64, 64)))
    labels_ref, depth_ref = scene.render(CAM, Pose.identity())
    labels_q, _ = scene.render(CAM, T_QUERY)
    points = map_points_from_depth(CAM, Pose.identity(), labels_ref, depth_ref, 3000,
                                   np.random.default_rng(1))
    return labels_q, points


def _levels(labels_q, **kw):
    return oracle_levels(labels_q, K, CAM, sizes=SIZES, **kw)


def test_reduction_names_are_the_contract():
    assert REDUCTION_NAMES == ("sum_sq", "max_prob", "dot_right", "dot_down", "dot_down_right",
                               "dot_down_left")


def test_level_reductions_match_definitions():
    rng = np.random.default_rng(0)
    p = rng.random((7, 5, 6)).astype(np.float32)
    p /= p.sum(0)
    red = level_reductions(p)
    assert red.shape == (6, 5, 6) and red.dtype == np.float32
    q = p.astype(np.float64)

    def dot(i, j, di, dj):
        ii, jj = i + di, j + dj
        return float(q[:, i, j] @ q[:, ii, jj]) if 0 <= ii < 5 and 0 <= jj < 6 else 0.0

    expect = np.array([[[dot(i, j, *d) for j in range(6)] for i in range(5)]
                       for d in ((0, 0), (0, 1), (1, 0), (1, 1), (1, -1))])
    np.testing.assert_allclose(red[[0, 2, 3, 4, 5]], expect, atol=1e-6)
    np.testing.assert_allclose(red[1], p.max(0))
    u8 = np.round(p * 255).astype(np.uint8)
    np.testing.assert_allclose(level_reductions(u8), level_reductions(u8.astype(np.float32) / 255),
                               atol=1e-6)


def test_reduced_sampler_equals_direct_k_dimensional_residuals(scene_data):
    """Same cost, gradient and Hessian as sampling all K channels: the reductions lose nothing."""
    labels_q, points = scene_data
    level = _levels(labels_q, blur_px=1.0)[-1]
    T = Pose.exp([0.03, 0.01, -0.02, 0.01, 0.003, -0.002]) @ T_QUERY
    a = _LevelObjective(level, points, 0.1, _ReducedSampler(level)).linearize(T)
    b = _LevelObjective(level, points, 0.1, _DirectSampler(level)).linearize(T)
    assert a.num_valid == b.num_valid > 1000
    assert a.cost == pytest.approx(b.cost, rel=1e-5)
    np.testing.assert_allclose(a.g, b.g, atol=1e-5 * np.abs(b.g).max())
    np.testing.assert_allclose(a.H, b.H, atol=1e-5 * np.abs(b.H).max())


def _check_gradient(level: LevelInput, points: LabeledPoints, sampler, T: Pose) -> None:
    """g of the normal equations is the exact gradient of the robust cost (all Jacobians chained),
    and the Gauss-Newton Hessian is symmetric positive semi-definite."""
    eps = 1e-5  # float32 cost (rounding ~1e-7 a point) vs kinks of the bilinear cost at pixel lines
    steps = [Pose.exp(sign * eps * e) @ T for e in np.eye(6) for sign in (1, -1)]
    every = _LevelObjective(level, points, 0.1, sampler(level))
    stable = np.all([np.isfinite(every.linearize(X).point_costs) for X in [T] + steps], axis=0)
    assert stable.sum() > 1000  # compare on the points visible at every evaluated pose
    obj = _LevelObjective(level, LabeledPoints(points.xyz[stable], points.labels[stable]), 0.1,
                          sampler(level))
    lin = obj.linearize(T)
    costs = [obj.linearize(X).point_costs for X in steps]
    assert all(np.isfinite(c).all() for c in costs)
    num = [(plus.sum() - minus.sum()) / (2 * eps) for plus, minus in zip(costs[::2], costs[1::2])]
    np.testing.assert_allclose(lin.g, num, rtol=2e-3, atol=1e-3 * np.abs(num).max())
    np.testing.assert_allclose(lin.H, lin.H.T, atol=1e-9 * np.abs(lin.H).max())
    assert np.linalg.eigvalsh(lin.H).min() > -1e-9 * np.abs(lin.H).max()


@pytest.mark.parametrize("sampler", [_ReducedSampler, _DirectSampler, _PixelMajorDirectSampler])
def test_gradient_matches_numerical_derivative_of_cost(scene_data, sampler):
    labels_q, points = scene_data
    level = _levels(labels_q, blur_px=1.5)[-1]
    _check_gradient(level, points, sampler, Pose.exp([0.03, -0.02, 0.05, 0.004, -0.003, 0.002]) @ T_QUERY)


def test_distorted_camera_gradient_and_pinhole_closed_form(scene_data):
    """The generic Jacobian (chained through `project_columns`) is exact with distortion, and the
    PINHOLE closed form equals it on an OPENCV camera without distortion."""
    labels_q, points = scene_data
    T = Pose.exp([0.03, -0.02, 0.05, 0.004, -0.003, 0.002]) @ T_QUERY
    pinhole = _levels(labels_q, blur_px=1.5)[-1]
    fx, fy, cx, cy = pinhole.camera.params
    undistorted = dataclasses.replace(
        pinhole, camera=Camera("OPENCV", 160, 120, [fx, fy, cx, cy, 0.0, 0.0, 0.0, 0.0]))
    a = _LevelObjective(pinhole, points, 0.1, _ReducedSampler(pinhole)).linearize(T)
    b = _LevelObjective(undistorted, points, 0.1, _ReducedSampler(undistorted)).linearize(T)
    assert a.num_valid == b.num_valid > 1000
    np.testing.assert_allclose(a.g, b.g, rtol=1e-4, atol=1e-5 * np.abs(b.g).max())
    np.testing.assert_allclose(a.H, b.H, rtol=1e-4, atol=1e-5 * np.abs(b.H).max())
    distorted = dataclasses.replace(
        pinhole, camera=Camera("OPENCV", 160, 120, [fx, fy, cx, cy, -0.08, 0.01, 0.001, -0.001]))
    _check_gradient(distorted, points, _ReducedSampler, T)


@pytest.mark.parametrize("offset", [
    [0.10, -0.05, 0.15, 0.01, -0.015, 0.005],
    [-0.25, 0.1, -0.3, -0.02, 0.03, 0.01],
])
def test_converges_from_small_offsets_on_clean_maps(scene_data, offset):
    labels_q, points = scene_data
    levels = _levels(labels_q)
    T0 = Pose.exp(offset) @ T_QUERY
    tight_lm = LMConfig(step_tol=1e-3, cost_rtol=1e-9, max_iterations=100)
    tight = RefineConfig(lm=tight_lm, lm_finest=tight_lm)
    res = refine(levels, points, T0, tight)
    assert res.converged and res.failure is None
    # the cost minimum (reached from the ground truth itself) is within pixel-aliasing of it ...
    minimum = refine(levels, points, T_QUERY, tight).T_cam_world
    dt, dr = pose_error(minimum, T_QUERY)
    assert dt < 0.02 and dr < 0.15, (dt, dr)  # 1 px = 0.46 deg at 160x120
    # ... and a start 0.2-0.4 m, 2-4 deg off lands on it
    dt, dr = pose_error(res.T_cam_world, minimum)
    assert dt < 2e-3 and dr < 1e-2, (dt, dr)  # 1/50 px; the normal equations are float32
    assert res.consistency > 0.85  # the rest sit within half a pixel of a label boundary
    assert len(res.costs) == len(levels) and all(len(c) >= 1 for c in res.costs)
    # the K-dimensional baseline on the same core lands on the same pose
    dt_b, dr_b = pose_error(refine_direct(levels, points, T0, tight).T_cam_world, res.T_cam_world)
    assert dt_b < 1e-3 and dr_b < 1e-2


def test_translation_search_recovers_start_that_lm_alone_cannot(scene_data):
    """0.9 m off (camera moved up and back): LM alone stops in a wrong minimum, the coarse
    translation search puts it in the basin."""
    labels_q, points = scene_data
    levels = _levels(labels_q)
    T0 = Pose(np.eye(3), np.array([0.0, -0.8, -0.4])) @ T_QUERY
    # with the loose finest-level stopping of earlier releases (0.1 px, 1e-3), LM alone stops in
    # the wrong minimum; the tight default (0.01 px, 1e-6) creeps out of it on this scene
    loose = LMConfig(step_tol=0.1, cost_rtol=1e-3)
    dt, _ = pose_error(refine(levels, points, T0, RefineConfig(search_radius_m=0.0,
                                                               lm_finest=loose)).T_cam_world, T_QUERY)
    assert dt > 0.1
    dt, _ = pose_error(refine(levels, points, T0, RefineConfig(lm_finest=loose)).T_cam_world, T_QUERY)
    assert dt < 0.02
    res = refine(levels, points, T0)
    dt, dr = pose_error(res.T_cam_world, T_QUERY)
    assert res.converged and dt < 0.02 and dr < 0.15


def test_translation_search_picks_the_lowest_cost_candidate(scene_data):
    """The vectorized search equals a per-candidate loop over K-dim residuals at nearest pixels."""
    labels_q, points = scene_data
    level = _levels(labels_q)[0]
    config = RefineConfig()
    T0 = Pose.exp([0.3, -0.5, 0.2, 0.02, -0.03, 0.01]) @ T_QUERY
    sub = LabeledPoints(points.xyz[:300], points.labels[:300])
    deltas = _search_grid(config.search_radius_m, config.search_step_m)
    assert len(deltas) > 100 and np.all(np.linalg.norm(deltas, axis=1) <= config.search_radius_m + 1e-6)
    assert np.any(np.all(deltas == 0, axis=1))  # the start itself is a candidate
    probs = level.probs.astype(np.float64)
    costs = []
    for d in deltas.astype(np.float64):
        uv, front = level.camera.project(T0.transform(sub.xyz) + d)
        j, i = np.floor(uv).astype(int).T
        inside = front & (j >= 0) & (j < probs.shape[2]) & (i >= 0) & (i < probs.shape[1])
        r = probs[:, np.where(inside, i, 0), np.where(inside, j, 0)].T
        r[np.arange(len(r)), sub.labels] -= 1.0
        c = np.where(inside, (r * r).sum(axis=1), 1.0)
        costs.append(np.log1p(c / config.psi**2).sum())
    picked = _translation_search(level, _ReducedSampler(level), sub, T0, config).t - T0.t
    k = int(np.argmin(np.linalg.norm(deltas - picked, axis=1)))
    np.testing.assert_allclose(deltas[k], picked, atol=1e-6)
    assert costs[k] <= min(costs) * (1 + 1e-5)
    assert costs[k] < costs[int(np.argmin(np.linalg.norm(deltas, axis=1)))]  # better than the start


def test_psi_is_annealed_on_coarser_levels_only():
    config = RefineConfig()
    assert config.psi == 0.1 and config.level_psi(3, 4) == 0.1
    assert [config.level_psi(i, 4) for i in range(4)] == [0.3, 0.2, 0.15, 0.1]
    assert [config.level_psi(i, 3) for i in range(3)] == [0.2, 0.15, 0.1]
    assert [config.level_psi(i, 5) for i in range(5)] == [0.3, 0.3, 0.2, 0.15, 0.1]
    assert config.level_psi(0, 1) == 0.1
    assert RefineConfig(psi_coarse=()).level_psi(0, 4) == 0.1


def test_quantized_maps_converge(scene_data):
    labels_q, points = scene_data
    levels = _levels(labels_q, quantize=True)
    assert levels[0].probs.dtype == np.uint8
    res = refine(levels, points, Pose.exp([0.1, 0.05, -0.1, 0.01, 0.01, 0.0]) @ T_QUERY)
    dt, dr = pose_error(res.T_cam_world, T_QUERY)
    assert res.converged and dt < 0.02 and dr < 0.15


def test_consistency_is_the_same_on_quantized_maps(scene_data):
    """The argmax test compares a rounded p_y (uint8) with the float max_prob reduction: without
    half a quantum of tolerance about half the right points failed it (graph fixes rejected)."""
    labels_q, points = scene_data
    rng = np.random.default_rng(3)
    flat = []
    for lv in _levels(labels_q, blur_px=1.0):  # spread, un-round probabilities, as a network's are
        p = lv.probs + rng.uniform(0, 0.05, lv.probs.shape).astype(np.float32)
        p /= p.sum(0, keepdims=True)
        flat.append(LevelInput(p, level_reductions(p), lv.camera))
    quant = [LevelInput(np.clip(np.rint(lv.probs * 255), 0, 255).astype(np.uint8), lv.reductions, lv.camera)
             for lv in flat]
    a = refine(flat, points, T_QUERY)
    b = refine(quant, points, T_QUERY)
    assert a.consistency > 0.5
    assert abs(a.consistency - b.consistency) < 0.03


def test_covariance_shrinks_with_more_points(scene_data):
    labels_q, points = scene_data
    levels = _levels(labels_q)
    traces = []
    for n in (300, 3000):
        sub = LabeledPoints(points.xyz[:n], points.labels[:n])
        cov = refine(levels, sub, T_QUERY).covariance
        assert cov.shape == (6, 6) and np.all(np.isfinite(cov))
        np.testing.assert_allclose(cov, cov.T, atol=1e-12 + 1e-9 * np.abs(cov).max())
        assert np.linalg.eigvalsh(cov).min() > 0
        traces.append(np.trace(cov[:3, :3]) + np.trace(cov[3:, 3:]))
    assert traces[1] < 0.5 * traces[0]


def test_points_behind_or_outside_are_ignored(scene_data):
    labels_q, points = scene_data
    levels = _levels(labels_q)
    T0 = Pose.exp([0.1, -0.05, 0.1, 0.01, 0.0, 0.005]) @ T_QUERY
    every_point = RefineConfig(points_per_pixel=100.0)  # no per-level subsampling
    base = refine(levels, points, T0, every_point)
    rng = np.random.default_rng(5)
    T_wq = T_QUERY.inv()
    behind = T_wq.transform(np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(-10, -0.5, 200)])
    outside = T_wq.transform(np.c_[rng.uniform(30, 60, (200, 1)), rng.uniform(-1, 1, (200, 1)),
                                   rng.uniform(1, 5, (200, 1))])
    on_plane = T_wq.transform(np.c_[rng.uniform(-1, 1, (20, 2)), np.zeros(20)])  # z = 0 exactly
    extra = np.concatenate([behind, outside, on_plane])
    more = LabeledPoints(np.concatenate([points.xyz, extra]),
                         np.concatenate([points.labels, rng.integers(0, K, len(extra))]))
    res = refine(levels, more, T0, every_point)
    assert res.num_valid == base.num_valid
    assert pose_error(res.T_cam_world, base.T_cam_world)[0] < 1e-6


def test_point_weights_scale_cost_and_zero_weight_removes_points(scene_data):
    labels_q, points = scene_data
    level = _levels(labels_q)[-1]
    T = Pose.exp([0.03, -0.02, 0.05, 0.004, -0.003, 0.002]) @ T_QUERY
    n = len(points.labels)

    def lin(pts):
        return _LevelObjective(level, pts, 0.1, _ReducedSampler(level)).linearize(T)

    plain = lin(points)
    double = lin(LabeledPoints(points.xyz, points.labels, np.full(n, 2.0)))
    assert double.cost == pytest.approx(2 * plain.cost, rel=1e-6)
    np.testing.assert_allclose(double.g, 2 * plain.g, rtol=1e-5, atol=1e-6 * np.abs(plain.g).max())
    half = np.arange(n) < n // 2
    masked = lin(LabeledPoints(points.xyz, points.labels, half.astype(float)))
    first = lin(LabeledPoints(points.xyz[half], points.labels[half]))
    assert masked.cost == pytest.approx(first.cost, rel=1e-6)
    np.testing.assert_allclose(masked.H, first.H, rtol=1e-5, atol=1e-6 * np.abs(first.H).max())


def test_too_few_points_is_a_reported_failure(scene_data):
    labels_q, points = scene_data
    res = refine(_levels(labels_q), LabeledPoints(points.xyz[:5], points.labels[:5]), T_QUERY)
    assert not res.converged and res.failure == "too_few_points"


def test_garbage_input_raises_clear_errors(scene_data):
    labels_q, points = scene_data
    levels = _levels(labels_q)
    with pytest.raises(InputError, match="finite Pose"):
        refine(levels, points, Pose(np.eye(3), [np.nan, 0, 0]))
    with pytest.raises(InputError, match="non-empty"):
        refine(levels, LabeledPoints(np.zeros((0, 3)), np.zeros(0, int)), T_QUERY)
    with pytest.raises(InputError, match="NaN"):
        refine(levels, LabeledPoints(np.full((3, 3), np.nan), np.zeros(3, int)), T_QUERY)
    with pytest.raises(InputError, match=r"labels must lie in \[0, 20\)"):
        refine(levels, LabeledPoints(points.xyz, points.labels + K), T_QUERY)
    with pytest.raises(InputError, match="integers"):
        refine(levels, LabeledPoints(points.xyz, points.labels.astype(float)), T_QUERY)
    bad_k = list(levels)
    bad_k[1] = LevelInput(levels[1].probs[:-1], None, levels[1].camera)
    with pytest.raises(InputError, match="must divide the finest"):
        refine(bad_k, points, T_QUERY)
    bad_dtype = [dataclasses.replace(levels[0], probs=levels[0].probs.astype(np.float64))]
    with pytest.raises(InputError, match="float32 or uint8"):
        refine(bad_dtype, points, T_QUERY)
    with pytest.raises(InputError, match="camera is 160x120 but the maps are 40x30"):
        refine([dataclasses.replace(levels[0], camera=CAM)], points, T_QUERY)
    with pytest.raises(InputError, match="reductions must be float32"):
        refine([dataclasses.replace(levels[0], reductions=levels[0].reductions[:2])], points, T_QUERY)
    with pytest.raises(InputError, match="at least one level"):
        refine([], points, T_QUERY)
    with pytest.raises(InputError, match="weights"):
        refine(levels, LabeledPoints(points.xyz, points.labels, -np.ones(len(points.labels))), T_QUERY)


def test_gaussian_prior_alone_decides_where_the_maps_say_nothing(scene_data):
    """Uniform maps (one label everywhere) carry no pose information: with a prior, refinement
    lands on the prior's mean from a start 0.3 m off, and reports about the prior's covariance."""
    labels_q, points = scene_data
    levels = _levels(np.zeros_like(labels_q))
    prior = GaussianPrior.isotropic(T_QUERY, 0.1, 0.01)
    res = refine(levels, points, Pose.exp([0.2, -0.1, 0.2, 0.0, 0.01, 0.0]) @ T_QUERY,
                 prior=prior)
    dt, dr = pose_error(res.T_cam_world, T_QUERY)
    assert dt < 1e-3 and dr < 0.01, (dt, dr)
    np.testing.assert_allclose(np.sqrt(np.diag(res.covariance)), [0.1] * 3 + [0.01] * 3, rtol=0.05)


def test_gaussian_prior_weighs_against_the_maps(scene_data):
    """Prior mean 0.2 m off the truth: a loose prior leaves the image's answer, a tight one holds
    the mean, one in between ends between them with less uncertainty than the prior alone."""
    labels_q, points = scene_data
    levels = _levels(labels_q)
    T_prior = Pose(np.eye(3), np.array([0.2, 0.0, 0.0])) @ T_QUERY
    lm = LMConfig(step_tol=1e-3, cost_rtol=1e-9, max_iterations=100)
    config = RefineConfig(lm=lm, lm_finest=lm)

    def run(std_m: float, std_rad: float):
        return refine(levels, points, T_prior, config, GaussianPrior.isotropic(T_prior, std_m, std_rad))

    free = refine(levels, points, T_prior, config).T_cam_world
    assert pose_error(free, T_QUERY)[0] < 0.02
    assert pose_error(run(100.0, 1.0).T_cam_world, free)[0] < 2e-3
    assert pose_error(run(1e-4, 1e-5).T_cam_world, T_prior)[0] < 1e-3
    mid = run(0.02, 0.002)
    d_free, d_prior = pose_error(mid.T_cam_world, free)[0], pose_error(mid.T_cam_world, T_prior)[0]
    assert d_free < 0.2 and d_prior < 0.2 and d_free + d_prior < 0.25, (d_free, d_prior)
    assert np.sqrt(mid.covariance[0, 0]) < 0.02


def test_gaussian_prior_is_validated():
    with pytest.raises(InputError, match="positive definite"):
        GaussianPrior(T_QUERY, np.diag([1.0, 1, 1, 1, 1, -1]))
    with pytest.raises(InputError, match="positive definite"):
        GaussianPrior(T_QUERY, np.full((6, 6), np.nan))


def test_refine_many_equals_one_refine_per_start(scene_data):
    """Lockstep refinement of several starts (one vectorized linearization per LM iteration)
    gives each start the result a refine of its own gives, including one that fails."""
    labels_q, points = scene_data
    levels = _levels(labels_q)
    starts = [Pose.exp(offset) @ T_QUERY for offset in (
        [0.10, -0.05, 0.15, 0.01, -0.015, 0.005], [-0.25, 0.1, -0.3, -0.02, 0.03, 0.01],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])] + [Pose.from_rotvec([0, 0, 0], [0, 0, -40.0]) @ T_QUERY]
    many = refine_many(levels, points, starts)
    for start, batched in zip(starts, many):
        alone = refine(levels, points, start)
        assert batched.converged == alone.converged and batched.failure == alone.failure
        assert batched.iterations == alone.iterations
        dt, dr = pose_error(batched.T_cam_world, alone.T_cam_world)
        assert dt < 1e-5 and dr < 1e-4, (dt, dr)
        assert batched.consistency == pytest.approx(alone.consistency)
        np.testing.assert_allclose(batched.covariance, alone.covariance, rtol=1e-4, atol=1e-10)
    assert sum(r.converged for r in many) == 3 and many[3].failure is not None
