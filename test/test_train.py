"""Training: the losses' defining properties, pair sources, and short real runs (SegLoc, FGSN, resume)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from segloc_core.errors import InputError
from segloc_core.net import losses as L
from segloc_core.net.pairs import in_heldout, synthetic_pairs, world_pairs
from segloc_core.net.train import TrainConfig, train

TINY = {
    "model": {"num_classes": 8, "width": 0.5, "feature_dim": 8, "input_width": 64, "input_height": 48},
    "data": {"source": "synthetic", "train_pairs": 6, "heldout_pairs": 2, "max_corr": 64},
    "optim": {"epochs": 2, "steps_per_epoch": 3, "batch_pairs": 3, "corr_per_pair": 16, "pixels_per_image": 64,
              "kmeans_images": 6, "threads": 1},
}


def test_target_update_sharpens_and_balances():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(500, 6), dim=1)
    q = L.target_update(p)
    assert torch.allclose(q.sum(1), torch.ones(500), atol=1e-5)
    ent = lambda x: float(-(x * x.log()).sum(1).mean())  # noqa: E731
    assert ent(q) < ent(p)  # p^2 sharpens
    assert torch.equal(q.argmax(1), (p ** 2 / p.pow(2).sum(0).sqrt() * p.mean(0)).argmax(1))


def test_sinkhorn_targets_balance_a_collapsed_assignment():
    torch.manual_seed(0)
    # 90% of the pixels prefer cluster 0: Eq. (2) keeps that; Sinkhorn-Knopp spreads the mass evenly.
    logits = torch.randn(600, 6)
    logits[:540, 0] += 3.0
    p = torch.softmax(logits, dim=1)
    q = L.sinkhorn_targets(p)
    assert torch.allclose(q.sum(1), torch.ones(600), atol=1e-5)
    assert float(q.mean(0).max() / q.mean(0).min()) < 1.5
    assert float(L.target_update(p, "uniform").mean(0)[0]) > 0.5
    assert L.entropy_normalised(q) > L.entropy_normalised(p)


def test_sinkhorn_config_trains(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "optim": {**TINY["optim"], "epochs": 2, "warmup_epochs": 1},
                                 "loss": {"label_prior": "sinkhorn"}})
    row = train(cfg, tmp_path, progress=False).final
    assert np.isfinite(row["dc_ce"]) and row["usage_3"] > 0.5


def test_student_t_prefers_nearest_prototype():
    c = torch.eye(4)
    f = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.2, 0.95]])
    q = L.student_t_targets(f, c)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert q.argmax(1).tolist() == [0, 3]


def test_discriminative_clustering_is_cross_entropy_to_targets():
    logits = torch.randn(50, 5, requires_grad=True)
    q = L.target_update(torch.softmax(logits, 1))
    ce, dc = L.discriminative_clustering(logits, q)
    assert math.isclose(float(ce.detach()), float(-(q * torch.log_softmax(logits.detach(), 1)).sum(1).mean()), rel_tol=1e-5)
    ce.backward()
    assert logits.grad is not None and float(dc) >= float(ce.detach()) - 1e-5  # L_DC = CE + KL(d^q||d^p) >= CE


def test_consistency_losses_reward_agreement():
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(2, 32, 16), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(2, 32, 16), dim=-1)
    assert L.feature_consistency(f, f, 0.1) < L.feature_consistency(f, noise, 0.1)
    centers = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    fa = f.flatten(0, 1)
    s = (fa @ centers.T).argmax(1)
    phi = L.concentrations(fa, centers)
    assert phi.shape == (8,) and torch.all(phi > 0)
    other = (s + 1) % 8
    assert L.prototypical_cross_contrastive(fa, fa, s, s, centers, phi) < \
        L.prototypical_cross_contrastive(fa, fa, other, other, centers, phi)
    logits = 10 * fa @ centers.T
    assert L.correspondence_consistency(logits, logits, s, s) < L.correspondence_consistency(logits, logits, other, other)


def test_multi_similarity_uses_pose_masks():
    T = np.tile(np.eye(4), (4, 1, 1))
    T[:, 0, 3] = [0.0, 1.0, 50.0, 51.0]  # two places, two images each
    pos, neg = L.pose_masks(torch.tensor(T, dtype=torch.float32))
    assert pos[0, 1] and pos[2, 3] and not pos[0, 0] and neg[0, 2] and not neg[0, 1]
    good = torch.tensor([[1.0, 0], [1, 0.05], [0, 1], [0.05, 1]])
    bad = torch.tensor([[1.0, 0], [0, 1], [1, 0.05], [0.05, 1]])
    assert L.multi_similarity(good, pos, neg) < L.multi_similarity(bad, pos, neg)


def test_synthetic_pairs_correspond():
    ps = synthetic_pairs(2, (64, 48), 32, seed=1)
    r = ps.pairs[0]
    a, b = ps.images[r.key_a].astype(int), ps.images[r.key_b].astype(int)
    # b is a shifted, re-lit copy: corresponding pixels correlate across the pair, random ones do not
    ia, ib = r.uv_a.astype(int), r.uv_b.astype(int)
    va, vb = a[ia[:, 1], ia[:, 0], 0], b[ib[:, 1], ib[:, 0], 0]
    assert np.corrcoef(va, vb)[0, 1] > 0.9


def test_location_split_holds_out_one_cell_in_five():
    xs = np.arange(0, 400, 1.0)
    held = np.array([in_heldout(np.array([x, 5.0, 1.5])) for x in xs])
    assert 0.15 < held.mean() < 0.25


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="unknown keys"):
        TrainConfig.from_dict({"optim": {"epoch": 3}})
    with pytest.raises(InputError, match="mode"):
        TrainConfig.from_dict({"mode": "other"})
    assert TrainConfig.load(tmp_path / "segloc_default.yaml").model.num_classes == 100  # shipped config by name


def test_segloc_training_run_and_resume(tmp_path):
    cfg = TrainConfig.from_dict(TINY)
    res = train(cfg, tmp_path / "run", progress=False)
    rows = json.loads(res.metrics.read_text())["rows"]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("dc_ce", "cc", "pc", "fc", "ms", "heldout_consistency_3", "heldout_label_entropy_0"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert res.plot.stat().st_size > 1000 and (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 3
    state = torch.load(res.weights, weights_only=True)
    assert state["heads.0.weight"].shape[0] == 8
    assert yaml.safe_load(res.config.read_text())["model"]["num_classes"] == 8
    # resume: one more epoch continues from the checkpoint and keeps the earlier rows
    longer = TrainConfig.from_dict({**TINY, "optim": {**TINY["optim"], "epochs": 3}})
    res3 = train(longer, tmp_path / "run", resume=True, progress=False)
    rows3 = json.loads(res3.metrics.read_text())["rows"]
    assert [r["epoch"] for r in rows3] == [1, 2, 3] and rows3[0] == rows[0]
    other = TrainConfig.from_dict({**TINY, "optim": {**TINY["optim"], "lr": 0.1}})
    with pytest.raises(InputError, match="another config"):
        train(other, tmp_path / "run", resume=True, progress=False)


def test_ablation_switches_terms_off(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "optim": {**TINY["optim"], "epochs": 1},
                                 "loss": {"pc": 0.0, "fc": 0.0, "ms": 0.0}})
    row = train(cfg, tmp_path, progress=False).final
    assert "pc" not in row and "fc" not in row and "ms" not in row and "cc" in row


def test_fgsn_mode_trains_with_reclustering(tmp_path):
    cfg = TrainConfig.from_dict({**TINY, "mode": "fgsn", "fgsn": {"recluster_every": 2, "pca_dim": 6}})
    row = train(cfg, tmp_path, progress=False).final
    assert np.isfinite(row["class"]) and np.isfinite(row["corr"]) and "dc_ce" not in row


def test_world_pairs_cross_conditions(tiny_world):
    ps = world_pairs(tiny_world, (64, 48), "train", max_pairs=6, max_corr=50, min_corr=20, seed=0)
    assert len(ps) == 6
    for r in ps.pairs:
        assert ps.condition[r.key_a] != ps.condition[r.key_b]
        assert len(r.uv_a) == len(r.uv_b) <= 50
        assert (r.uv_a >= 0).all() and (r.uv_a[:, 0] <= 64).all() and (r.uv_a[:, 1] <= 48).all()
        assert not in_heldout(ps.T_world_cam[r.key_a][:3, 3])
    assert next(iter(ps.images.values())).shape == (48, 64, 3)


def test_colmap_pairs_from_sfm_tracks(tmp_path):
    """Two images of a text COLMAP model sharing 80 points: correspondences are the tracks' observations."""
    import cv2

    from segloc_core.net.pairs import colmap_pairs

    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "model" / "cameras.txt").write_text("1 PINHOLE 128 96 100 100 64 48\n")
    rng = np.random.default_rng(0)
    pts = rng.uniform([-2, -1.5, 4], [2, 1.5, 6], (80, 3))
    images, tracks = [], {j: [] for j in range(1, 81)}
    for iid, tx in ((1, 0.0), (2, 0.3)):
        p = pts - [tx, 0, 0]  # camera iid sits at x = tx, T_cam_world = [I | -tx]
        uv = p[:, :2] / p[:, 2:] * 100 + [64, 48]
        images += [f"{iid} 1 0 0 0 {-tx} 0 0 1 img{iid}.png", " ".join(f"{u} {v} {j + 1}" for j, (u, v) in enumerate(uv))]
        for j in range(80):
            tracks[j + 1].append(f"{iid} {j}")
        cv2.imwrite(str(tmp_path / "images" / f"img{iid}.png"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    (tmp_path / "model" / "images.txt").write_text("\n".join(images) + "\n")
    (tmp_path / "model" / "points3D.txt").write_text(
        "\n".join(f"{j} {x} {y} {z} 128 128 128 0.5 " + " ".join(tracks[j]) for j, (x, y, z) in enumerate(pts, 1)) + "\n")
    ps = colmap_pairs(tmp_path / "model", tmp_path / "images", (64, 48), min_shared=20, max_corr=50)
    assert len(ps) == 1 and len(ps.pairs[0].uv_a) == 50
    r = ps.pairs[0]
    assert ps.images[r.key_a].shape == (48, 64, 3)
    assert np.allclose(r.uv_a[:, 1], r.uv_b[:, 1], atol=1e-4)  # sideways motion: same rows
    assert np.all(r.uv_b[:, 0] < r.uv_a[:, 0])  # camera moved right, points move left (half size)
    assert (r.key_a, r.key_b) == ("img1.png", "img2.png")
    assert np.allclose(ps.T_world_cam["img2.png"][:3, 3], [0.3, 0, 0])
    with pytest.raises(InputError, match="does not exist"):
        colmap_pairs(tmp_path / "nope", tmp_path / "images", (64, 48))
