"""Retrieval over a map's database descriptors, the pose prior and the retrieval benchmark."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from segloc_core.bench.retrieval import run_bench
from segloc_core.descriptor import Whitening
from segloc_core.errors import InputError
from segloc_core.geometry import Pose
from segloc_core.localize.retrieval import (
    DescriptorIndex,
    RetrievalConfig,
    RetrievalResult,
    Retriever,
    mean_pose,
    pose_prior,
    prior_pose,
)
from segloc_core.maps.format import Cameras, DatabaseImages, MapMetadata, assemble_map

D = 32


def corridor_map(n_images: int = 30, n_points: int = 3000, seed: int = 0):
    """Cameras every 2 m along x looking along +x; each sees the points 1..25 m ahead."""
    rng = np.random.default_rng(seed)
    xyz = np.stack([rng.uniform(0, 2 * n_images + 25, n_points), rng.uniform(-3, 3, n_points),
                    rng.uniform(-2, 2, n_points)], 1)
    # optical frame looking along world +x: z_cam = x_world, x_cam = -y_world, y_cam = -z_world
    R = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float)
    centres = np.stack([np.arange(n_images) * 2.0, np.zeros(n_images), np.zeros(n_images)], 1)
    poses = [Pose(R, -R @ c) for c in centres]
    obs_p, obs_i = [], []
    for i, c in enumerate(centres):
        seen = np.flatnonzero((xyz[:, 0] > c[0] + 1) & (xyz[:, 0] < c[0] + 25))
        obs_p.append(seen)
        obs_i.append(np.full(len(seen), i))
    desc = rng.standard_normal((n_images, D)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    images = DatabaseImages(tuple(f"{i:03d}.png" for i in range(n_images)),
                            np.stack([p.quat_xyzw() for p in poses]), np.stack([p.t for p in poses]),
                            np.zeros(n_images, np.uint32), desc.astype(np.float16))
    params = np.full((1, 12), np.nan)
    params[0, :4] = [200, 200, 160, 120]
    m = assemble_map(MapMetadata(K=20, model_hash="t", source="test"), xyz, rng.integers(0, 20, n_points),
                     rng.uniform(0, 1, n_points), np.concatenate(obs_p), np.concatenate(obs_i), images,
                     Cameras(("PINHOLE",), np.array([[320, 240]], np.uint32), params),
                     Whitening(np.zeros(D, np.float32), np.eye(D, dtype=np.float32)))
    return m, poses


def test_top1_is_the_matching_image_and_prior_is_its_pose():
    m, poses = corridor_map()
    r = Retriever(m, RetrievalConfig(top_k=3, prior_mode="top1"))
    assert r.index.kind == "IndexFlatIP"
    raw = m.images.descriptors[17].astype(np.float32) * 3.0  # scale does not matter after L2
    res = r.query(raw)
    assert res.image_ids[0] == 17 and res.scores[0] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(res.scores) <= 0)
    prior = r.prior(raw)
    assert np.allclose(prior.T_cam_world.matrix(), poses[17].matrix(), atol=1e-9)
    assert np.linalg.eigvalsh(prior.covariance).min() > 0
    with pytest.raises(InputError, match="dimensions"):
        r.query(np.ones(D + 1))


def test_weighted_prior_averages_and_covariance_reflects_spread():
    m, poses = corridor_map()
    res = RetrievalResult(np.array([10, 12]), np.array([0.9, 0.9], np.float32))
    cfg = RetrievalConfig(prior_mode="weighted", min_sigma_m=0.01, min_sigma_rad=0.01)
    prior = pose_prior(m, res, cfg)
    assert np.allclose(prior.T_cam_world.center(), [22.0, 0, 0], atol=1e-9)
    # spread along x of +-2 m shows up in that axis' variance (camera z is world x here)
    sigma = np.sqrt(np.diag(prior.covariance))
    assert sigma[2] > 1.0 and sigma[0] < 0.1 and sigma[1] < 0.1
    T, cov = prior_pose(m, res, cfg)  # the pose-only path the retrieval node uses
    assert np.allclose(T.matrix(), prior.T_cam_world.matrix()) and np.allclose(cov, prior.covariance)
    tight = pose_prior(m, RetrievalResult(np.array([10]), np.array([0.9], np.float32)), cfg)
    assert np.sqrt(np.diag(tight.covariance)).max() == pytest.approx(0.01)


def test_rotation_mean_is_proper():
    a = Pose.from_rotvec([0, 0, 0.4], [1, 0, 0])
    b = Pose.from_rotvec([0, 0, -0.2], [3, 0, 0])
    m = mean_pose([a, b], np.array([1.0, 2.0]))
    # chordal L2 mean: close to the weighted angle mean (0) for small spreads, and a rotation
    assert Rotation.from_matrix(m.R).as_rotvec() == pytest.approx([0, 0, 0.0], abs=0.01)
    assert np.linalg.det(m.R) == pytest.approx(1.0) and np.allclose(m.R @ m.R.T, np.eye(3))
    assert np.allclose(m.center(), (a.center() + 2 * b.center()) / 3)


def test_prior_points_are_the_union_capped_by_confidence():
    m, _ = corridor_map()
    res = RetrievalResult(np.array([4, 5, 9]), np.ones(3, np.float32))
    union = np.union1d(np.union1d(m.points_of_images([4]), m.points_of_images([5])), m.points_of_images([9]))
    full = pose_prior(m, res, RetrievalConfig(max_points=10**6))
    assert np.array_equal(np.sort(full.point_ids), union)
    capped = pose_prior(m, res, RetrievalConfig(max_points=100))
    assert len(capped.point_ids) == 100
    assert np.all(np.diff(capped.confidence) <= 0)
    assert capped.confidence.min() >= np.sort(m.confidence[union])[-100]
    assert np.allclose(capped.xyz_m, m.xyz[capped.point_ids])


def test_approximate_index_agrees_with_exact():
    rng = np.random.default_rng(1)
    db = rng.standard_normal((3000, D)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    approx = DescriptorIndex(db, RetrievalConfig(exact_max_images=1000))
    exact = DescriptorIndex(db, RetrievalConfig())
    assert approx.kind == "IndexHNSWFlat" and exact.kind == "IndexFlatIP"
    q = db[:200] + 0.01 * rng.standard_normal((200, D)).astype(np.float32)
    assert np.mean(approx.search(q, 1)[1][:, 0] == exact.search(q, 1)[1][:, 0]) > 0.95


def test_bench_reports_sizes_index_and_recall(capsys):
    out = run_bench(sizes=(500, 4000), dim=32, n_queries=50, config=RetrievalConfig(exact_max_images=1000))
    assert set(out["query_ms"]) == {"500", "4000"}
    assert out["index"] == {"500": "IndexFlatIP", "4000": "IndexHNSWFlat"}
    assert 0.5 <= out["recall_at_1_vs_exact_at_largest"] <= 1.0
    assert out["exact_query_ms_at_largest"] > 0 and out["speedup_vs_exact_at_largest"] > 0
