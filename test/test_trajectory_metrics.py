"""Trajectory metrics: hand-computed cases (known offsets give known recall), file round trips,
association and interpolation, and per-frame errors checked against evo's APE on the same TUM
files."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from segloc_core.errors import InputError
from segloc_core.eval.trajectory_metrics import (
    DEFAULT_THRESHOLDS,
    Trajectory,
    frame_errors,
    localization_metrics,
    markdown_table,
    plot_error_curve,
    plot_trajectory,
    read_kapture_trajectory,
    read_tum,
    write_json,
    write_tum,
)
from segloc_core.geometry import Pose

T0 = 1_750_000_000_000_000_000
DT = 100_000_000  # 10 Hz


def _drive(n: int = 40, seed: int = 0) -> Trajectory:
    """A curving drive: positions along an arc, yaw following it, some pitch/roll wobble."""
    rng = np.random.default_rng(seed)
    s = np.arange(n) * 0.5
    t = np.stack([10 * np.sin(s / 10), 10 * (1 - np.cos(s / 10)), 0.1 * np.sin(s)], axis=1)
    euler = np.stack([s / 10, 0.02 * rng.standard_normal(n), 0.02 * rng.standard_normal(n)], 1)
    R = Rotation.from_euler("ZYX", euler).as_matrix()
    return Trajectory(T0 + np.arange(n) * DT, R, t)


def _perturbed(gt: Trajectory, dt_m: np.ndarray, angle_deg: np.ndarray, seed: int = 1) -> Trajectory:
    """gt with each position moved by dt_m[i] metres and rotated by angle_deg[i] (random axes)."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((len(gt), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    axes = rng.standard_normal((len(gt), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    dR = Rotation.from_rotvec(axes * np.radians(angle_deg)[:, None]).as_matrix()
    return Trajectory(gt.stamps_ns, gt.R @ dR, gt.t + dirs * np.asarray(dt_m)[:, None])


def test_known_offsets_give_known_recall_and_medians():
    gt = _drive(40)
    # 10 frames per band: (0.1 m, 1°) (0.4 m, 3°) (2 m, 8°) (7 m, 1°); 4 of them not localized
    dt_m = np.repeat([0.1, 0.4, 2.0, 7.0], 10)
    angle = np.repeat([1.0, 3.0, 8.0, 1.0], 10)
    est = _perturbed(gt, dt_m, angle)
    keep = np.ones(40, bool)
    keep[[0, 15, 25, 35]] = False  # one lost in each of the last three bands, and the first
    est = Trajectory(est.stamps_ns[keep], est.R[keep], est.t[keep])
    m = localization_metrics(est, gt)
    assert m.num_frames == 40 and m.num_localized == 36
    assert m.localized_share == pytest.approx(0.9)
    # within (0.25, 2): band 1 only, 9 frames; (0.5, 5): bands 1-2, 9+9; (5, 10): bands 1-3
    assert m.recall == pytest.approx((9 / 40, 18 / 40, 27 / 40))
    assert m.recall_at(0.5, 5.0) == pytest.approx(18 / 40)
    # localized: 9 x 0.1, 9 x 0.4, 9 x 2, 9 x 7 -> median between 0.4 and 2
    assert m.median_translation_m == pytest.approx((0.4 + 2.0) / 2)
    assert m.median_rotation_deg == pytest.approx((1.0 + 3.0) / 2, abs=1e-6)
    assert m.thresholds == DEFAULT_THRESHOLDS


def test_camera_poses_inverted_and_rotation_only_error():
    """T_cam_world input: a camera turned in place by 3° has 0 m and 3° error."""
    T_world_cam = [Pose.from_rotvec([0, 0, 0.1 * i], [i, 2.0, 1.0]) for i in range(5)]
    turned = [p @ Pose.from_rotvec([0, np.radians(3.0), 0], [0, 0, 0]) for p in T_world_cam]
    stamps = T0 + np.arange(5) * DT
    gt = Trajectory.from_poses(stamps, [p.inv() for p in T_world_cam], inverse=True)
    est = Trajectory.from_poses(stamps, [p.inv() for p in turned], inverse=True)
    np.testing.assert_allclose(gt.t, [p.t for p in T_world_cam], atol=1e-12)
    e = frame_errors(est, gt)
    np.testing.assert_allclose(e.translation_m, 0.0, atol=1e-9)
    np.testing.assert_allclose(e.rotation_deg, 3.0, atol=1e-6)
    m = localization_metrics(est, gt, thresholds=((0.1, 2.0), (0.1, 5.0)))
    assert m.recall == (0.0, 1.0)


def test_association_nearest_within_tolerance_and_gt_interpolation():
    gt = _drive(20)
    # estimates 3 ms late, exact poses of gt interpolated at their stamps, one 60 ms late
    stamps = gt.stamps_ns + 3_000_000
    stamps[7] = gt.stamps_ns[7] + 60_000_000
    valid, est = gt.interpolate(stamps, max_gap_ns=DT)
    assert valid[:-1].all() and not valid[-1]  # the last is beyond the ground truth
    exact = localization_metrics(est, gt)
    assert exact.num_localized == 0  # no stamp matches exactly
    near = frame_errors(est, gt, max_dt_ns=5_000_000)
    assert near.localized.sum() == 18  # 19 estimates, the 60 ms one is out of tolerance
    assert not near.localized[7] and not near.localized[19]
    assert np.nanmax(near.translation_m) > 0.01  # compared with the neighbouring gt sample
    interp = frame_errors(est, gt, max_dt_ns=5_000_000, interpolate_gt=True)
    np.testing.assert_array_equal(interp.localized, near.localized)
    np.testing.assert_allclose(interp.translation_m[interp.localized], 0.0, atol=1e-9)
    np.testing.assert_allclose(interp.rotation_deg[interp.localized], 0.0, atol=1e-5)
    # an estimate serves one frame only: two gt frames 1 ms apart, one estimate between them
    two = Trajectory([T0, T0 + 1_000_000], np.stack([np.eye(3)] * 2), np.zeros((2, 3)))
    one = Trajectory([T0 + 400_000], np.eye(3)[None], np.zeros((1, 3)))
    assert frame_errors(one, two, max_dt_ns=2_000_000).estimate_index.tolist() == [0, -1]


def test_interpolation_is_linear_and_slerp():
    a, b = Pose.from_rotvec([0, 0, 0], [0, 0, 0]), Pose.from_rotvec([0, 0, 1.0], [4, 0, 0])
    traj = Trajectory.from_poses([0, 1000], [a, b])
    valid, mid = traj.interpolate(np.array([250, 1000, 1001]), max_gap_ns=10_000)
    assert valid.tolist() == [True, True, False]
    np.testing.assert_allclose(mid.t[0], [1, 0, 0])
    assert Pose(mid.R[0], mid.t[0]).rotvec()[2] == pytest.approx(0.25)
    np.testing.assert_allclose(mid.R[1], b.R, atol=1e-12)
    assert not traj.interpolate(np.array([500]), max_gap_ns=999)[0][0]  # gap too long


def test_tum_round_trip_keeps_nanoseconds_and_rejects_bad_rows(tmp_path):
    gt = _drive(10)
    gt = Trajectory(gt.stamps_ns + 123, gt.R, gt.t)  # ns that float seconds would lose
    path = write_tum(tmp_path / "gt.tum", gt)
    back = read_tum(path)
    np.testing.assert_array_equal(back.stamps_ns, gt.stamps_ns)
    np.testing.assert_allclose(back.t, gt.t, atol=1e-9)
    np.testing.assert_allclose(back.R, gt.R, atol=1e-8)
    bad = tmp_path / "bad.tum"
    bad.write_text("1.0 0 0 0 0 0 0 1\n2.0 0 0 0 0 0 1\n")
    with pytest.raises(InputError, match="bad.tum:2: expected 8 values"):
        read_tum(bad)
    bad.write_text("1.0 0 0 0 0 0 0 0\n")
    with pytest.raises(InputError, match="quaternion"):
        read_tum(bad)


def test_kapture_trajectory_is_world_to_device(tmp_path):
    T_world_cam = Pose.from_rotvec([0.1, -0.2, 0.3], [5.0, -2.0, 1.5])
    T_cam_world = T_world_cam.inv()
    qx, qy, qz, qw = T_cam_world.quat_xyzw()
    tx, ty, tz = T_cam_world.t
    (tmp_path / "sensors").mkdir()
    (tmp_path / "sensors" / "trajectories.txt").write_text(
        "# kapture format: 1.1\n# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz\n"
        f"{T0}, cam, {qw}, {qx}, {qy}, {qz}, {tx}, {ty}, {tz}\n"
        f"{T0 + DT}, lidar, 1, 0, 0, 0, 0, 0, 0\n")
    with pytest.raises(InputError, match="several devices"):
        read_kapture_trajectory(tmp_path)
    traj = read_kapture_trajectory(tmp_path, device_id="cam")
    assert traj.stamps_ns.tolist() == [T0]
    np.testing.assert_allclose(traj.t[0], T_world_cam.t, atol=1e-9)
    np.testing.assert_allclose(traj.R[0], T_world_cam.R, atol=1e-9)


def test_per_frame_errors_match_evo_ape(tmp_path):
    """evo (independent implementation) on the same TUM files: APE translation part and rotation
    angle without alignment, after evo's own nearest-stamp association."""
    pytest.importorskip("evo", reason="evo is not installed (requirements.txt pins it)")
    from evo.core import metrics, sync
    from evo.tools import file_interface

    gt = _drive(60, seed=3)
    rng = np.random.default_rng(4)
    est = _perturbed(gt, rng.uniform(0, 3, len(gt)), rng.uniform(0, 12, len(gt)), seed=5)
    keep = rng.random(len(gt)) > 0.2  # ~20% not localized
    jitter = rng.integers(-2_000_000, 2_000_000, len(gt))  # stamps up to 2 ms off
    est = Trajectory(est.stamps_ns[keep] + jitter[keep], est.R[keep], est.t[keep])
    gt_file, est_file = write_tum(tmp_path / "gt.tum", gt), write_tum(tmp_path / "est.tum", est)

    ref, cand = (file_interface.read_tum_trajectory_file(str(f)) for f in (gt_file, est_file))
    ref, cand = sync.associate_trajectories(ref, cand, max_diff=0.005)
    ape_t = metrics.APE(metrics.PoseRelation.translation_part)
    ape_t.process_data((ref, cand))
    ape_r = metrics.APE(metrics.PoseRelation.rotation_angle_deg)
    ape_r.process_data((ref, cand))

    ours = frame_errors(read_tum(est_file), read_tum(gt_file), max_dt_ns=5_000_000)
    assert ours.localized.sum() == keep.sum() == len(ape_t.error)
    np.testing.assert_allclose(ours.translation_m[ours.localized], ape_t.error, atol=1e-6)
    np.testing.assert_allclose(ours.rotation_deg[ours.localized], ape_r.error, atol=1e-4)
    m = localization_metrics(read_tum(est_file), read_tum(gt_file), max_dt_ns=5_000_000)
    assert m.median_translation_m == pytest.approx(
        ape_t.get_statistic(metrics.StatisticsType.median), abs=1e-6)


def test_reports_json_markdown_and_plots(tmp_path):
    gt = _drive(30)
    conditions = ["summer"] * 15 + ["night"] * 15
    prior = _perturbed(gt, np.full(30, 1.5), np.full(30, 6.0))
    refined = _perturbed(gt, np.full(30, 0.1), np.full(30, 0.5))
    refined = Trajectory(refined.stamps_ns[:-5], refined.R[:-5], refined.t[:-5])  # night: 5 lost
    latency = [(int(s), int(s) + 40_000_000 + 1_000_000 * i) for i, s in enumerate(gt.stamps_ns)]
    results = {
        "PA (retrieval prior)": localization_metrics(prior, gt, conditions=conditions),
        "PR (refined)": localization_metrics(refined, gt, conditions=conditions, latency_ns=latency),
    }
    pr = results["PR (refined)"]
    assert pr.by_condition["summer"].recall[0] == 1.0
    assert pr.by_condition["night"].localized_share == pytest.approx(10 / 15)
    assert pr.latency_p50_ms == pytest.approx(40 + 14.5)
    assert results["PA (retrieval prior)"].recall == pytest.approx((0.0, 0.0, 1.0))

    doc = json.loads(write_json(tmp_path / "r.json", results, {"bag": "x"}).read_text())
    assert doc["bag"] == "x"
    assert doc["methods"]["PR (refined)"]["recall"]["0.25m_2deg"] == pytest.approx(25 / 30)
    assert doc["methods"]["PA (retrieval prior)"]["latency_p50_ms"] is None
    assert doc["methods"]["PR (refined)"]["by_condition"]["night"]["num_frames"] == 15

    table = markdown_table(results)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| method | recall 0.25 m, 2°")
    assert lines[2].startswith("| PA (retrieval prior) | 0.0% | 0.0% | 100.0% | 1.500 |")
    assert "| PR (refined) | 83.3% |" in table and "54.5 / " in table
    assert any(line.startswith("| PR (refined) · night |") for line in lines)
    # a map of unknown scale: the report says units, not metres
    assert markdown_table(results, "units").splitlines()[0].startswith("| method | recall 0.25 units, 2°")

    errors = frame_errors(refined, gt)
    png = plot_trajectory(tmp_path / "traj.png", gt, refined, errors, "PR")
    curve = plot_error_curve(tmp_path / "curve.png", {"PA": frame_errors(prior, gt), "PR": errors})
    for path in (png, curve):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_bad_trajectories_are_refused():
    with pytest.raises(InputError, match="repeated timestamps"):
        Trajectory([1, 1], np.stack([np.eye(3)] * 2), np.zeros((2, 3)))
    with pytest.raises(InputError, match="NaN"):
        Trajectory([1], np.eye(3)[None], np.full((1, 3), np.nan))
    with pytest.raises(InputError, match="condition labels"):
        gt = _drive(5)
        localization_metrics(gt, gt, conditions=["a"] * 4)
    unsorted = Trajectory([3, 1, 2], np.stack([np.eye(3)] * 3), np.arange(9.0).reshape(3, 3))
    assert unsorted.stamps_ns.tolist() == [1, 2, 3] and unsorted.t[0, 0] == 3.0
