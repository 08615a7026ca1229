"""Geometry-label model: place cells, labelled views of the world, the training mode, and maps
whose points take their label from their position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from segloc_core.errors import InputError
from segloc_core.net.label_set import IGNORE, load_label_set, save_label_set, world_label_set
from segloc_core.net.train import TrainConfig, train
from segloc_core.net.train_geometry import augment_geometry, pooled_targets
from segloc_core.place_labels import PlaceCells


def test_place_cells_hash_cells_and_parse():
    c = PlaceCells.parse("4,100,0")
    assert c == PlaceCells(4.0, 100, 0.0) and PlaceCells.parse(c.name()) == c
    rng = np.random.default_rng(0)
    base = np.floor(rng.uniform(-50, 50, (200, 3)) / 4) * 4
    inside = base + rng.uniform(0.01, 3.99, (200, 3))  # another point of the same 4 m cell
    assert np.array_equal(c.labels(base), c.labels(inside))
    labels = c.labels(rng.uniform(-500, 500, (5000, 3)))
    assert labels.min() >= 0 and labels.max() <= 98  # K-1 is sky's
    assert np.bincount(labels, minlength=99).min() > 0  # every label in use
    sky = np.zeros(5000, bool)
    sky[:10] = True
    assert (c.labels(rng.uniform(-5, 5, (5000, 3)), sky=sky)[:10] == 99).all()
    h = PlaceCells.parse("1,100,4,10")
    pts = rng.uniform(-40, 40, (3000, 3))
    parent_cell = np.floor(pts / 4).astype(int)
    parents = h.labels(pts) // 10
    for cell in {tuple(p) for p in parent_cell[:50]}:  # one parent label per 4 m cell
        assert len(set(parents[(parent_cell == cell).all(1)])) == 1
    for bad in ("x", "1,300", "1,100,4,7", "4,100,1,10"):
        with pytest.raises(InputError):
            PlaceCells.parse(bad)


def test_pooled_targets_equal_one_hot_area_pooling():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (2, 8, 12), generator=g)
    labels[0, :3, :5] = IGNORE
    q, share = pooled_targets(labels, 5, 4)  # label 5 is out of range: ignored like IGNORE
    valid = labels < 5
    onehot = torch.nn.functional.one_hot(labels.clamp(max=4), 5).permute(0, 3, 1, 2).float() * valid[:, None]
    counts = torch.nn.functional.avg_pool2d(onehot, 4) * 16
    np.testing.assert_allclose(share[:, 0].numpy(), counts.sum(1).numpy() / 16)
    np.testing.assert_allclose(q.numpy(), (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy(), atol=1e-6)


def test_geometric_augmentation_moves_labels_with_the_image():
    g = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    labels = ((y // 8) * 8 + x // 8).long()[None].repeat(4, 1, 1)  # 48 distinct 8 px blocks
    imgs = labels[:, None].float().repeat(1, 3, 1, 1) * 4.0  # each block's grey level names its label
    out, lab = augment_geometry(imgs, labels, g, (0.5, 0.6), 0.0)  # zoomed out: borders come in
    assert (lab == IGNORE).float().mean() > 0.3  # outside the source image: unlabelled
    ok = lab != IGNORE
    grey = out[:, 0][ok] / 4.0
    assert (torch.isin(lab[ok], labels[0].unique())).all()
    assert (grey.round() == lab[ok].float()).float().mean() > 0.8  # labels follow the pixels (nearest vs bilinear)


def test_label_set_views_labels_and_round_trip(tiny_world, tmp_path):
    from segloc_core.net.label_set import frame_labels
    from segloc_core.world import load_world

    cells = PlaceCells(4.0, 50, 0.0)
    ls = world_label_set(tiny_world, ["summer"], cells, jitter_views=1, progress=False)
    ds = load_world(tiny_world)
    recs = ds.frames("summer")
    assert len(ls) == 2 * len(recs) and ls.names[:2] == ["summer/000000", "summer/000000/j0"]
    rec = recs[0]
    assert np.array_equal(ls.labels[0], frame_labels(ds.ids(rec), ds.depth(rec), rec.camera, rec.T_world_cam,
                                                     cells, False))
    assert set(np.unique(ls.labels)) <= set(range(50)) | {IGNORE}
    assert (ls.labels[0] == 49).mean() > 0.05  # sky
    for i in range(0, len(ls), 2):  # a re-rendered view is near its frame, not on it
        d = np.linalg.norm(ls.T_world_cam[i + 1][:3, 3] - ls.T_world_cam[i][:3, 3])
        assert 0.0 < d < 2.5
    path = save_label_set(ls, tmp_path / "labels.npz")
    back = load_label_set(path)
    assert back.names == ls.names and np.array_equal(back.labels, ls.labels)
    assert np.array_equal(back.T_world_cam, ls.T_world_cam)
    assert np.abs(back.images.astype(int) - ls.images).mean() < 4  # JPEG quality 90
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError):
        load_label_set(tmp_path / "bad.npz")


def test_extra_conditions_add_lamp_lit_views_with_other_windows_lit(tiny_world):
    """Training-only appearances (dusk) are rendered near every frame, labelled like it; dusk and the
    rainy late evening light other windows than the night traversal (the evaluation's night stays
    unseen)."""
    from segloc_core.world import WorldRenderer, load_world
    from segloc_core.world.materials import WINDOW

    cells = PlaceCells(4.0, 50, 0.0)
    ds = load_world(tiny_world)
    recs = ds.frames("summer")
    ls = world_label_set(tiny_world, ["summer"], cells, jitter_views=0, progress=False, extra_conditions=("dusk",))
    assert len(ls) == 2 * len(recs)
    assert ls.names[len(recs):] == [f"dusk/{r.index:06d}/summer" for r in recs]
    assert (ls.labels[len(recs):] < 50).mean() > 0.5  # labelled like the frames
    with pytest.raises(InputError, match="unknown extra conditions"):
        world_label_set(tiny_world, ["summer"], cells, jitter_views=0, progress=False, extra_conditions=("monsoon",))
    with WorldRenderer(ds.config) as r:
        views = {c: [r.render(c, rec.T_cam_world) for rec in recs] for c in ("night", "dusk", "rain_night")}
    win = np.concatenate([((a.ids == WINDOW) & (b.ids == WINDOW) & (c.ids == WINDOW)).ravel()  # parked cars differ
                          for a, b, c in zip(views["night"], views["dusk"], views["rain_night"])])
    lit = {c: np.concatenate([v.rgb.mean(2).ravel() for v in vs])[win] > 150 for c, vs in views.items()}
    assert win.sum() > 500 and all(0.1 < v.mean() < 0.9 for v in lit.values()), {c: v.mean() for c, v in lit.items()}
    for evening in ("dusk", "rain_night"):  # other windows, not the night's pattern
        assert (lit["night"] != lit[evening]).mean() > 0.25
    cfg = TrainConfig.from_dict({"mode": "geometry", "geometry": {"extra_conditions": ["dusk"]}})
    assert cfg.geometry.extra_conditions == ("dusk",)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_geometry_training_resume_and_map_labels_from_position(tiny_world, tmp_path):
    from segloc_core.maps.build import BuildConfig, build_world_map
    from segloc_core.net.export import export_model
    from segloc_core.net.infer import load_segmenter

    d = {"mode": "geometry",
         "model": {"num_classes": 20, "width": 0.25, "feature_dim": 8, "input_width": 160, "input_height": 112,
                   "input_norm": "image"},
         "data": {"source": "world", "world": str(tiny_world), "conditions": ["summer", "winter"]},
         "optim": {"epochs": 1, "steps_per_epoch": 3, "batch_pairs": 2, "threads": 1, "device": "cpu"},
         "geometry": {"cell_m": 4.0, "parent_cell_m": 0.0, "jitter_views": 0, "heldout_every": 4}}
    cfg = TrainConfig.from_dict(d)
    assert cfg.model.place_cells == "4,20,0"  # the model records the labels it learns
    res = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(res.final["loss_3"]) and 0.0 <= res.final["heldout_accuracy_3"] <= 1.0
    two = TrainConfig.from_dict({**d, "optim": {**d["optim"], "epochs": 2}})
    rows = yaml.safe_load(res.config.read_text())
    assert rows["model"]["place_cells"] == "4,20,0"
    res2 = train(two, tmp_path / "run", resume=True, progress=False)
    assert res2.final["epoch"] == 2
    with pytest.raises(InputError):  # a place-cells model is made by mode geometry only
        TrainConfig.from_dict({**d, "mode": "segloc", "model": {**d["model"], "place_cells": "4,20,0"}})
    onnx = export_model(res2.weights, res2.config, tmp_path / "geo.onnx")
    seg = load_segmenter(onnx, "onnxruntime", threads=1)
    assert seg.place_cells == PlaceCells(4.0, 20, 0.0)
    m = build_world_map(tiny_world, seg, BuildConfig(), progress=False)
    assert len(m) > 100 and (m.confidence_u8 == 255).all()
    # stored positions are quantized (a few mm): labels agree except at cell borders
    assert (m.labels == seg.place_cells.labels(m.xyz)).mean() > 0.98


def test_place_hits_count_the_right_cell_and_skip_sky(tiny_world):
    """`segloc eval seg`'s place-label accuracy: the true cells score 1, other labels do not."""
    from segloc_core.eval.seg_metrics import place_hits
    from segloc_core.net.label_set import frame_labels
    from segloc_core.world import load_world

    cells = PlaceCells(4.0, 50, 0.0)
    ds = load_world(tiny_world)
    rec = ds.frames("winter")[3]
    truth = frame_labels(ds.ids(rec), ds.depth(rec), rec.camera, rec.T_world_cam, cells, False)
    finest = truth[1::2, 1::2].astype(np.int64)  # stride 2: the label at each output pixel's centre
    ok, total = place_hits(finest, ds, rec, cells)
    assert total > 0.2 * finest.size and ok == total
    assert total < ((finest != IGNORE).sum())  # sky pixels are not counted
    wrong, total2 = place_hits((finest + 1) % 49, ds, rec, cells)
    assert total2 == total and wrong < 0.05 * total
