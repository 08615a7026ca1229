"""The oracle segmenter (ground-truth place labels), hierarchical coarse levels in the refiner,
label-quality metrics and `segloc bench accuracy`, on the tiny world."""

import numpy as np
import pytest

from segloc_core import label_metrics as lm
from segloc_core.errors import InputError
from segloc_core.geometry import Pose, pose_error
from segloc_core.localize.localizer import Localizer
from segloc_core.localize.refine import LevelInput, refine
from segloc_core.net.oracle import OracleSegmenter, OracleSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 frames 2 m apart under summer and night at the product's 320x240 (the network's levels
    20x15 ... 160x120; at 160x120 input the coarsest level is 10x7 and resolves nothing)."""
    from segloc_core.world import WorldConfig, load_world, render_world

    config = WorldConfig(loop_length_m=220.0, frame_rate_hz=5.0, max_frames=24,
                         conditions=("summer", "night"), mapping_condition="summer")
    path = render_world(config, tmp_path_factory.mktemp("world"), progress=False)
    return path, load_world(path), OracleSegmenter(path, OracleSpec.parse("oracle:1,100"))


def test_spec_parsing_and_errors():
    assert OracleSpec.parse("oracle") == OracleSpec()
    s = OracleSpec.parse("oracle:2,60,8,6")
    assert (s.cells.cell_m, s.K, s.cells.parent_cell_m, s.cells.parents) == (2.0, 60, 8.0, 6)
    assert not OracleSpec.parse("oracle:1,100,0").hierarchical
    for bad in ("orcle:1", "oracle:x,100", "oracle:1,100,4,7", "oracle:1,300", "oracle:4,100,1,10"):
        with pytest.raises(InputError):
            OracleSpec.parse(bad)


def test_levels_probabilities_and_hierarchy(tiny):
    _, ds, seg = tiny
    rec = ds.frames("summer")[3]
    res = seg.segment(None, rec)
    assert [lv.probs.shape[0] for lv in res.levels] == [10, 10, 100, 100]
    assert seg.input_size == (320, 240)
    for i, lv in enumerate(res.levels):
        assert lv.probs.shape[1:][::-1] == seg.level_size(i)
        np.testing.assert_allclose(lv.probs.sum(0), 1.0, atol=1e-4)
    # a coarse level's label is the parent of the fine one: fine argmax // 10, pooled, agrees
    fine = res.levels[2].probs.argmax(0) // 10
    coarse = res.levels[1].probs.argmax(0)
    assert np.mean(fine[::2, ::2][: coarse.shape[0], : coarse.shape[1]] == coarse) > 0.6
    assert res.descriptor.shape == (9 * 100,)
    # a frame by stamp, by geometry name and by image path all resolve to the same record
    assert seg.record(rec.stamp_ns) is seg.record(f"summer/{rec.index:06d}") is seg.record(str(rec.rgb_path))
    with pytest.raises(InputError, match="not a frame"):
        seg.segment(None, "summer/999999")
    with pytest.raises(InputError, match="needs to know"):
        seg.segment(np.zeros((240, 320, 3), np.uint8))


def test_labels_are_place_specific_and_condition_invariant(tiny):
    """The same world point keeps its label under another condition at a different pixel, and
    labels do not follow image position."""
    from segloc_core.world import correspondences, nearest_frame

    _, ds, seg = tiny
    summer = ds.frames("summer")
    agree = []
    for rec in ds.frames("night")[::3]:
        db = summer[nearest_frame(summer, rec.T_world_cam)]
        a = seg.segment(None, rec).levels[-1].probs.argmax(0)
        b = seg.segment(None, db).levels[-1].probs.argmax(0)
        uv_a, uv_b = correspondences(ds, rec, db, stride=4)
        value, chance, n = lm.cross_condition_consistency(a, b, uv_a, uv_b,
                                                          (rec.camera.width, rec.camera.height), 5.0)
        assert n == 0 or chance < 0.2
        if n:
            agree.append(value)
    assert agree and np.mean(agree) > 0.75
    maps = [seg.segment(None, r).levels[-1].probs.argmax(0) for r in summer]
    centres = np.array([r.T_world_cam.t for r in summer])
    pos, chance, pairs = lm.positional_agreement(maps, centres, 100, min_distance_m=15.0)
    assert pairs > 0 and pos < 0.5  # only sky sits at the same pixels


def test_refiner_reads_parent_labels_on_coarse_levels(tiny):
    """A start 1 m / 5 deg off converges to centimetres with 10-class coarse levels reading
    label // 10, and a level whose K does not divide the finest K is refused."""
    from segloc_core.bench.accuracy import perturb
    from segloc_core.maps.build import label_and_describe, world_geometry

    path, ds, seg = tiny
    m = label_and_describe(world_geometry(path, progress=False), seg, progress=False)
    rec = ds.frames("night")[5]
    res = seg.segment(None, rec)
    levels = [LevelInput(lv.probs, lv.reductions, seg.level_camera(rec.camera, i))
              for i, lv in enumerate(res.levels)]
    start = perturb(rec.T_cam_world, 1.0, 5.0, np.random.default_rng(1))
    loc = Localizer(m)
    points = loc.labeled_points(loc.points_near(start))
    out = refine(levels, points, start)
    t, r = pose_error(out.T_cam_world, rec.T_cam_world)
    assert out.converged and t < 0.1 and r < 0.5, (t, r, out.failure)
    bad = [LevelInput(np.full((7, 15, 20), 1 / 7, np.float32), None, levels[0].camera)] + levels[1:]
    with pytest.raises(InputError, match="must divide"):
        refine(bad, points, start)


def test_label_share_and_effective_labels():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(0, 200, 20000), rng.uniform(0, 4, 20000), np.zeros(20000)]
    place = (np.floor(xyz[:, 0]) * 7919 % 97).astype(np.int64)  # 1 m place cells
    band = np.zeros(20000, np.int64)  # one label everywhere
    s_place = lm.label_share_by_distance(xyz, place, pairs_per_bin=2000)
    s_band = lm.label_share_by_distance(xyz, band, pairs_per_bin=2000)
    assert s_place["5-10m"] < s_place["chance"] + 0.03 and s_place["0-0.5m"] > 0.4
    assert s_band["5-10m"] == 1.0 and s_band["chance"] == 1.0
    assert lm.effective_labels(np.arange(10)) == pytest.approx(10.0)
    assert lm.effective_labels(np.zeros(5, int)) == pytest.approx(1.0)


def test_positional_agreement_flags_position_labels():
    h, w = 30, 40
    bands = np.repeat((np.arange(h) * 8 // h)[:, None], w, axis=1)  # labels = image rows
    rng = np.random.default_rng(0)
    centres = np.arange(20)[:, None] * np.array([[100.0, 0, 0]])
    pos, chance, _ = lm.positional_agreement([bands] * 20, centres, 8)
    assert pos == 1.0 and chance < 0.2
    noise = [rng.integers(0, 8, (h, w)) for _ in range(20)]
    pos, chance, _ = lm.positional_agreement(noise, centres, 8)
    assert abs(pos - chance) < 0.03


def test_bench_accuracy_reports_every_key(tiny, tmp_path, monkeypatch):
    from segloc_core.bench.accuracy import run

    monkeypatch.setenv("SEGLOC_HOME", str(tmp_path))
    path, _, _ = tiny
    res = run({"oracle": "oracle:1,100", "sift": "sift"}, path, ("night",), stride=2, out=tmp_path, progress=False)
    r = res["oracle"]
    sift = res["sift"]  # the classical baseline beside it, on the oracle's retrieval here
    assert sift["queries"] == r["queries"] and len(sift["recall"]) == 3 and "oracle" in sift["method"]
    assert sift["map_bytes"] > 128 * sift["map_points"] > 0 and "invert" in sift["privacy"]
    for key in ("recall", "recall_from_gt_1m5deg", "recall_from_gt_3m10deg", "drift_from_gt_m",
                "retrieval_recall_at_1", "label_share_5_10m", "label_share_chance",
                "positional_agreement", "positional_chance"):
        assert key in r
    assert len(r["recall"]) == 3 and r["recall"][2] >= 0.8  # oracle labels localize
    assert r["drift_from_gt_m"] < 0.2
    # the per-axis drift is the same drift seen along the camera's axes
    assert len(r["drift_from_gt_cam_xyz_m"]) == 3 and max(r["drift_from_gt_cam_xyz_m"]) <= r["drift_from_gt_m"] + 1e-3
    assert 0.0 <= r["covariance_3sigma_share"] <= 1.0 and r["covariance_median_mahalanobis"] > 0
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_position_mahalanobis_reads_the_camera_frame_covariance():
    """The covariance is of a left perturbation in the camera frame (`RefineResult.covariance`):
    an error of 0.3 m along the camera's forward axis with a 0.1 m std there is 3 sigma, whatever
    the camera's orientation in the world; a 10 cm std across it does not shrink that."""
    from segloc_core.bench.accuracy import position_mahalanobis

    truth = Pose.from_rotvec(np.array([0.3, -1.2, 0.5]), np.array([4.0, -2.0, 7.0]))
    est = Pose.from_rotvec(np.zeros(3), np.array([0.0, 0.0, -0.3])) @ truth  # 0.3 m behind
    cov = np.diag([1.0, 1.0, 0.01, 1e-4, 1e-4, 1e-4])
    assert position_mahalanobis(est, cov, truth) == pytest.approx(3.0, rel=1e-6)
    assert position_mahalanobis(est, np.diag([0.01, 0.01, 1.0, 1e-4, 1e-4, 1e-4]), truth) == pytest.approx(0.3, rel=1e-6)
    assert position_mahalanobis(est, np.full((6, 6), np.inf), truth) == np.inf


def test_bench_refine_on_oracle_inputs(tiny, tmp_path):
    """`segloc bench refine` measures the refiner on the oracle's product-size levels and map points
    (not a synthetic scene): every configuration, the K ratio, the 320x240 study and the basin PNG."""
    from segloc_core.bench.refine import CONFIGS, PRODUCT, run_bench

    path, _, _ = tiny
    res = run_bench(path, ("night",), queries=2, starts=2, points=2000, baseline_runs=1, out_dir=tmp_path,
                    progress=False)
    assert set(res["configs"]) == set(CONFIGS) and res["queries"] == 2
    product = res["configs"][PRODUCT]
    assert product["trials"] == 4 and product["segmenter"] == "oracle:1,100"
    # oracle labels from starts within 1.5 m / 8 deg: the refiner lands within 0.5 m / 5 deg
    assert product["success"][2] >= 0.75 and product["drift_from_gt_m"] < 0.25
    assert res["map_points_median"] <= 2000
    for key in ("ms_per_refine", "ratio_k100_k10", "ratio_320x240_160x120", "speedup", "baseline_ms"):
        assert np.isfinite(res[key]) and res[key] > 0, key
    assert (tmp_path / "refine_basin.png").stat().st_size > 0
