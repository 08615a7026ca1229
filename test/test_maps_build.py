"""Map building: label voting, the world source, COLMAP import (maupertuis), kapture triangulation, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segloc_core.cli import main
from segloc_core.errors import InputError
from segloc_core.maps.build import BuildConfig, Observations, finish_map, sample_nearest, vote_labels, world_geometry
from segloc_core.maps.format import load_map, save_map, size_report

MAUPERTUIS = Path(__file__).resolve().parent / "data" / "maupertuis"  # BSD-3, NAVER (kapture samples)


def test_vote_keeps_majority_and_agreement():
    # point 0: votes 2,2,1 -> 2 (2/3); point 1: 0,0 -> 0 (1.0); point 2: unobserved
    obs = Observations(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1]),
                       np.array([[0.5, 0.5], [1.5, 0.5], [0.5, 0.5], [1.5, 0.5], [0.5, 0.5]]))
    maps = {0: [2, 0], 1: [0, 2], 2: [1, 1]}  # image -> label of pixel column 0 and 1

    def lookup(img: int, uv: np.ndarray) -> np.ndarray:
        probs = np.zeros((3, 1, 2), np.float32)
        for col, lab in enumerate(maps[img]):
            probs[lab, 0, col] = 1.0
        return sample_nearest(probs, uv)

    labels, agreement = vote_labels(obs, lookup, 3, progress=False)
    assert labels.tolist() == [2, 0, -1]
    assert agreement == pytest.approx([2 / 3, 1.0, 0.0])


def test_world_map_labels_follow_ground_truth(tiny_world, tmp_path):
    """Probability maps from the world's surface ids: voting must recover each point's id class."""
    from segloc_core.world import load_world

    K = 50
    ds = load_world(tiny_world)
    geo = world_geometry(tiny_world, BuildConfig(), progress=False)
    frames = ds.frames(ds.mapping_condition)
    assert len(geo.names) == len(frames) and len(geo.xyz_m) > 1000
    # every observation is a surface sample of that image (depth test), within the voxel size
    ids = [ds.ids(r) for r in frames]

    def lookup(img: int, uv: np.ndarray) -> np.ndarray:
        probs = np.eye(K, dtype=np.float32)[ids[img] % K].transpose(2, 0, 1)
        return sample_nearest(probs, uv)

    labels, agreement = vote_labels(geo.observations, lookup, len(geo.xyz_m), progress=False)
    observed = labels >= 0
    from segloc_core.world.materials import DYNAMIC_IDS

    first_obs = np.unique(geo.observations.point_index, return_index=True)[1]
    obs = geo.observations
    hit = np.array([ids[i][int(v), int(u)] for i, (u, v) in zip(obs.image_index[first_obs], obs.uv[first_obs])])
    assert np.isin(hit, DYNAMIC_IDS).mean() < 0.01  # (only where a car now hides a static point)
    assert observed.mean() > 0.99
    assert np.median(agreement[observed]) == 1.0  # surfaces keep their id across views
    raw = np.random.default_rng(0).standard_normal((len(geo.names), 40)).astype(np.float32)
    m = finish_map(geo, labels, agreement, raw, K, "ground-truth", BuildConfig(min_agreement=0.6))
    assert len(m) <= observed.sum() and len(m) > 0.8 * observed.sum()
    assert m.confidence.min() >= 0.6 - 1 / 255
    path = save_map(m, tmp_path / "gt.segmap")
    assert size_report(path).bytes_per_point <= 16.0
    assert np.linalg.norm(m.xyz - m.xyz.mean(0), axis=1).max() < 500


def test_world_map_end_to_end_with_a_real_segmenter(tiny_world, untrained_model, tmp_path, capsys):
    from segloc_core.maps.cli import MapSource, build_map

    out = tmp_path / "world.segmap"
    m = build_map(MapSource("world", tiny_world), out, untrained_model, BuildConfig(min_agreement=0.0),
                  progress=False)
    loaded = load_map(out)
    assert save_map(loaded, tmp_path / "again.segmap").read_bytes() == out.read_bytes()
    assert loaded.meta.K == 16 and loaded.meta.model_hash == m.meta.model_hash
    assert len(loaded.images) == 12 and loaded.images.descriptors.dtype == np.float16
    assert size_report(out).bytes_per_point <= 16.0
    # the CLI reports the same figures, and draws the map
    assert main(["map", "info", str(out), "--plot", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # `segloc retrieve` with a database image as query finds that image first
    import json

    import cv2

    from segloc_core.world import load_world

    ds = load_world(tiny_world)
    rec = ds.frames(ds.mapping_condition)[5]
    query = tmp_path / "query.png"
    cv2.imwrite(str(query), ds.rgb(rec)[:, :, ::-1])
    capsys.readouterr()
    assert main(["retrieve", str(query), "--map", str(out), "--model", str(untrained_model), "--top-k", "3"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["top_k"][0] == loaded.images.names[5] and answer["scores"][0] > 0.99
    assert answer["points"] > 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.segmap").write_bytes(bytes(data))
    assert main(["map", "info", str(tmp_path / "bad.segmap")]) == 4  # InputError exit code


def test_maupertuis_colmap_import(untrained_model, tmp_path, capsys):
    from segloc_core.maps.colmap import colmap_geometry

    rec_dir = MAUPERTUIS / "colmap" / "reconstruction"
    geo = colmap_geometry(rec_dir, MAUPERTUIS / "colmap" / "images")
    assert len(geo.xyz_m) == 1039 and len(geo.names) == 4
    assert len(geo.observations.point_index) == 3355
    i = geo.names.index("03.jpg")
    assert geo.T_cam_world[i].quat_xyzw() * np.sign(geo.T_cam_world[i].quat_xyzw()[3]) == pytest.approx(
        [0.0113506, 0.344769, 0.375358, 0.860298], abs=1e-6)
    assert geo.cameras[i].model == "PINHOLE" and geo.cameras[i].params[0] == geo.cameras[i].params[1] == 1847.53
    # observations reproject onto their keypoints: poses, cameras and tracks line up
    obs = geo.observations
    sel = obs.image_index == i
    uv, valid = geo.cameras[i].project(geo.T_cam_world[i].transform(geo.xyz_m[obs.point_index[sel]]))
    assert valid.all() and np.median(np.linalg.norm(uv - obs.uv[sel], axis=1)) < 2.0

    # the same model in COLMAP's binary format imports identically
    import pycolmap

    (tmp_path / "bin").mkdir()
    pycolmap.Reconstruction(str(rec_dir)).write_binary(str(tmp_path / "bin"))
    geo_bin = colmap_geometry(tmp_path / "bin", MAUPERTUIS / "colmap" / "images")
    assert np.array_equal(geo_bin.xyz_m, geo.xyz_m) and np.array_equal(geo_bin.observations.uv, obs.uv)

    out = tmp_path / "maupertuis.segmap"
    assert main(["map", "import", str(rec_dir), "--model", str(untrained_model), "--min-agreement", "0",
                 "-o", str(out)]) == 0
    m = load_map(out)
    assert len(m) == 1039 and len(m.images) == 4 and m.meta.source.startswith("colmap:")
    assert np.abs(np.sort(m.xyz[:, 2]) - np.sort(geo.xyz_m[:, 2])).max() <= m.quantization_error_max_m
    capsys.readouterr()
    assert main(["map", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "points            1039" in info and "with SIFT" in info


def test_kapture_posed_images_triangulate_in_the_given_frame():
    """pycolmap triangulation with the kapture poses held fixed (SIFT on 4 images, a few seconds)."""
    from segloc_core.maps.colmap import kapture_geometry, read_kapture_posed_images

    names, poses, _ = read_kapture_posed_images(MAUPERTUIS / "kapture")
    geo = kapture_geometry(MAUPERTUIS / "kapture", max_image_size=640)
    assert len(geo.xyz_m) > 0 and set(geo.names) == set(names)
    for name, pose in zip(geo.names, geo.T_cam_world):
        assert np.allclose(pose.matrix(), poses[names.index(name)].matrix(), atol=1e-9)
    # triangulated points sit in front of the cameras that observe them
    obs = geo.observations
    z = np.array([geo.T_cam_world[i].transform(geo.xyz_m[p])[2] for p, i in zip(obs.point_index, obs.image_index)])
    assert (z > 0).all()


def test_colmap_model_without_points_is_triangulated(tmp_path):
    import pycolmap

    from segloc_core.maps.colmap import colmap_geometry

    rec = pycolmap.Reconstruction(str(MAUPERTUIS / "colmap" / "reconstruction"))
    for pid in list(rec.points3D):
        rec.delete_point3D(pid)
    rec.write_text(str(tmp_path))
    geo = colmap_geometry(tmp_path, MAUPERTUIS / "colmap" / "images", max_image_size=640)
    assert len(geo.xyz_m) > 0 and geo.source.startswith("colmap:")
    poses = {rec.images[i].name: rec.images[i].cam_from_world().matrix() for i in rec.images}
    for name, pose in zip(geo.names, geo.T_cam_world):
        assert np.allclose(pose.matrix()[:3], poses[name], atol=1e-6)


def test_colmap_model_with_several_cameras_and_no_points_is_triangulated(tmp_path):
    """Issue 14, defect 4: posed images from two cameras (two of the four photos at 60 %) were refused
    with 'triangulation here supports one camera'; each image now keeps its own intrinsics."""
    import cv2
    import pycolmap

    from segloc_core.maps.colmap import colmap_geometry

    rec = pycolmap.Reconstruction(str(MAUPERTUIS / "colmap" / "reconstruction"))
    base = next(iter(rec.cameras.values()))
    f, cx, cy = base.params
    w2, h2 = round(base.width * 0.6), round(base.height * 0.6)
    images, model = tmp_path / "images", tmp_path / "model"
    images.mkdir()
    model.mkdir()
    (model / "cameras.txt").write_text(f"1 SIMPLE_PINHOLE {base.width} {base.height} {f} {cx} {cy}\n"
                                       f"2 SIMPLE_PINHOLE {w2} {h2} {f * w2 / base.width} {cx * w2 / base.width} "
                                       f"{cy * h2 / base.height}\n")
    rows = []
    for i, image in enumerate(sorted(rec.images.values(), key=lambda im: im.name), start=1):
        rgb = cv2.imread(str(MAUPERTUIS / "colmap" / "images" / image.name))
        if i % 2 == 0:
            rgb = cv2.resize(rgb, (w2, h2), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(images / image.name), rgb)
        cfw = image.cam_from_world()
        x, y, z, w = cfw.rotation.quat
        rows.append(f"{i} {w} {x} {y} {z} {' '.join(map(str, cfw.translation))} {2 - i % 2} {image.name}\n\n")
    (model / "images.txt").write_text("".join(rows))
    (model / "points3D.txt").write_text("")
    geo = colmap_geometry(model, images, max_image_size=640)
    assert len(geo.names) == 4 and len(geo.xyz_m) > 20
    sizes = {name: (cam.width, cam.height) for name, cam in zip(geo.names, geo.cameras)}
    assert len(set(sizes.values())) == 2
    # points reproject onto their keypoints in both cameras
    obs = geo.observations
    for i in range(len(geo.names)):
        sel = obs.image_index == i
        uv, valid = geo.cameras[i].project(geo.T_cam_world[i].transform(geo.xyz_m[obs.point_index[sel]]))
        assert valid.all() and np.median(np.linalg.norm(uv - obs.uv[sel], axis=1)) < 2.0


def test_kapture_rig_poses_are_resolved(tmp_path):
    """Issue 14, defect 2: a camera in a rig (rigs.txt, trajectories of the rig) was ignored ('fewer
    than 2 posed camera records'); its pose is the rig's composed with its pose in the rig."""
    import shutil

    from segloc_core.geometry import Pose
    from segloc_core.maps.colmap import read_kapture_posed_images

    names, poses, cams = read_kapture_posed_images(MAUPERTUIS / "kapture")
    rig = tmp_path / "kapture"
    shutil.copytree(MAUPERTUIS / "kapture", rig)
    T_cam_rig = Pose.from_rotvec([0.1, -0.2, 0.05], [0.3, -0.1, 1.2])
    lines = ["# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz"]
    for i, pose in enumerate(poses, start=1):  # records are stamped 1, 2, ... in order
        T = T_cam_rig.inv() @ pose  # T_rig_world
        x, y, z, w = T.quat_xyzw()
        lines.append(f"{i}, rig_1, {w}, {x}, {y}, {z}, {', '.join(map(str, T.t))}")
    (rig / "sensors" / "trajectories.txt").write_text("\n".join(lines) + "\n")
    x, y, z, w = T_cam_rig.quat_xyzw()
    (rig / "sensors" / "rigs.txt").write_text(
        f"# rig_device_id, sensor_device_id, qw, qx, qy, qz, tx, ty, tz\nrig_1, cam_00001, {w}, {x}, {y}, {z}, "
        f"{', '.join(map(str, T_cam_rig.t))}\n")
    got_names, got_poses, _ = read_kapture_posed_images(rig)
    assert got_names == names
    for a, b in zip(got_poses, poses):
        assert np.allclose(a.matrix(), b.matrix(), atol=1e-6)


def test_bad_sources_are_refused(tmp_path):
    from segloc_core.maps.cli import MapSource
    from segloc_core.maps.colmap import colmap_geometry, read_kapture_posed_images

    with pytest.raises(InputError, match="no COLMAP model"):
        colmap_geometry(tmp_path, tmp_path)
    with pytest.raises(InputError, match="kapture"):
        read_kapture_posed_images(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        MapSource("world", tmp_path / "nope")


def test_sfm_from_images_alone(tmp_path):
    """pycolmap SfM (SIFT, exhaustive matching, incremental mapping) on 6 rendered frames."""
    import shutil

    from segloc_core.maps.colmap import sfm_geometry
    from segloc_core.world import WorldConfig, load_world, render_world

    root = render_world(WorldConfig(seed=3, loop_length_m=220.0, width=320, height=240, conditions=("summer",),
                                    max_frames=6), tmp_path / "world", progress=False)
    ds = load_world(root)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    import cv2

    for rec in ds.frames("summer"):
        rgb = ds.rgb(rec)[:, :, ::-1]
        if rec.index % 2:  # another camera (issue 14, defect 3: photos of other sizes were dropped)
            rgb = cv2.resize(rgb, (288, 216), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(image_dir / f"{rec.index:04d}.png"), rgb)
    shutil.rmtree(root)
    geo = sfm_geometry(image_dir)
    assert len(geo.names) >= 2 and len(geo.xyz_m) >= 30
    assert {(c.width, c.height) for c in geo.cameras} == {(320, 240), (288, 216)}
    # SfM's own frame: points reproject onto their keypoints and lie in front of the cameras
    obs = geo.observations
    for i in range(len(geo.names)):
        sel = obs.image_index == i
        p_cam = geo.T_cam_world[i].transform(geo.xyz_m[obs.point_index[sel]])
        uv, valid = geo.cameras[i].project(p_cam)
        assert valid.all() and np.median(np.linalg.norm(uv - obs.uv[sel], axis=1)) < 2.0


def test_map_from_a_mapping_bag(graph_assets, tmp_path, monkeypatch):
    """Issue 14: `segloc map build --source bag`: the images of a recorded run, posed by its pose
    topic (PoseStamped of base_link in map) and the camera mounting on /tf_static, triangulated; a bag
    without a pose topic goes through structure from motion and gives a map without metric scale."""
    from rosbags.rosbag2 import Reader, Writer

    from segloc_core.maps.format import load_map
    from segloc_ros.cli import main

    monkeypatch.setenv("SEGLOC_HOME", str(tmp_path / "home"))
    bag, ds = graph_assets["bag"], graph_assets["ds"]
    out = tmp_path / "bag.segmap"
    assert main(["map", "build", "--source", "bag", str(bag), "-o", str(out)]) == 0
    m = load_map(out)
    assert m.meta.units == "m" and len(m.images) == 50 and len(m) > 100 and m.meta.scene_depth > 1
    truth = {rec.stamp_ns: rec.T_cam_world for rec in ds.frames("overcast")}
    for i, name in enumerate(m.images.names):
        assert np.allclose(m.images.T_cam_world(i).matrix(), truth[int(name.split(".")[0])].matrix(), atol=1e-4)

    unposed = tmp_path / "unposed"
    with Reader(bag) as src, Writer(unposed, version=9) as dst:
        conns = {c.id: dst.add_connection(c.topic, c.msgtype, typestore=None, msgdef=c.msgdef.data,
                                          rihs01=c.digest, offered_qos_profiles=c.ext.offered_qos_profiles)
                 for c in src.connections if c.topic != "/ground_truth/pose"}
        for c, stamp, raw in src.messages([c for c in src.connections if c.id in conns]):
            dst.write(conns[c.id], stamp, raw)
    out2 = tmp_path / "unposed.segmap"
    assert main(["map", "build", "--source", "bag", str(unposed), "-o", str(out2)]) == 0
    assert load_map(out2).meta.units == "units"
    assert main(["map", "build", "--source", "bag", str(bag), "--pose-topic", "/tf", "-o", str(tmp_path / "x")]) == 4


def test_train_model_for_the_place_then_label_the_map_with_it(untrained_model, tmp_path):
    """`map import --train-model`: labels from the map's own points (painted where they are seen),
    cells scaled to a map of unknown scale, a model trained from --model's weights, exported beside
    the map, and the map labelled by that model's cells."""
    import yaml

    from segloc_core.maps.build import scene_depth
    from segloc_core.maps.colmap import colmap_geometry
    from segloc_core.net.infer import load_segmenter
    from segloc_core.net.label_set import IGNORE, load_label_set
    from segloc_core.place_labels import PlaceCells

    rec_dir = MAUPERTUIS / "colmap" / "reconstruction"
    cfg = tmp_path / "place.yaml"
    cfg.write_text(yaml.safe_dump({
        "mode": "geometry",
        "model": {"num_classes": 16, "width": 0.25, "input_width": 160, "input_height": 112},
        "optim": {"epochs": 1, "steps_per_epoch": 2, "batch_pairs": 2, "threads": 1, "device": "cpu"},
        "geometry": {"cell_m": 4.0, "parent_cell_m": 0.0, "jitter_views": 0, "heldout_every": 2}}))
    out = tmp_path / "place.segmap"
    assert main(["map", "import", str(rec_dir), "--model", str(untrained_model), "--train-model", str(cfg),
                 "--min-agreement", "0", "-o", str(out)]) == 0
    geo = colmap_geometry(rec_dir, MAUPERTUIS / "colmap" / "images")
    depth = scene_depth(geo)
    seg = load_segmenter(out.with_suffix(".onnx"), "onnxruntime", threads=1)
    assert seg.place_cells == PlaceCells(float(f"{4.0 * depth / 23.0:.4g}"), 16, 0.0)  # "units": scene-relative
    m = load_map(out)
    assert m.meta.model_hash == seg.model_hash and m.meta.units == "units"
    assert (m.labels == seg.place_cells.labels(m.xyz)).mean() > 0.98
    from segloc_core.net.segmenters import open_segmenter

    assert open_segmenter(map_path=out).model_hash == seg.model_hash  # localize/eval pick the map's own model
    run = tmp_path / "place_training"
    assert (run / "metrics.json").is_file() and (run / "training.png").is_file()
    ls = load_label_set(run / "labels.npz")
    assert len(ls) == 4 and ls.images.shape[1:] == (112, 160, 3)
    assert 0.002 < (ls.labels != IGNORE).mean() < 0.5  # discs at observed points, the rest unlabelled
    # every observation's pixel carries its point's label (discs of neighbours may overlap a little)
    from segloc_core.geometry import aspect_crop

    obs, hits, total = geo.observations, 0, 0
    point_labels = seg.place_cells.labels(geo.xyz_m)
    for k, name in enumerate(ls.names):
        i = int(name.split("/")[1])
        cam = geo.cameras[i]
        x0, y0, w, h = aspect_crop(cam.width, cam.height, (160, 112))
        sel = obs.image_index == i
        uv = ((obs.uv[sel] - (x0, y0)) * (160 / w, 112 / h)).astype(int)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 160) & (uv[:, 1] >= 0) & (uv[:, 1] < 112)
        got = ls.labels[k][uv[inside, 1], uv[inside, 0]]
        hits += int((got == point_labels[obs.point_index[sel]][inside]).sum())
        total += int(inside.sum())
    assert total > 500 and hits / total > 0.9


def test_place_cells_sized_so_each_photo_sees_enough_of_them():
    """`geometry.cells_per_image`: the cell edge at which the median mapping image sees that many
    distinct cells (Sacre Coeur with the world's 4 m cells scaled by depth: 8-22 cells a photo, one
    of them covering most of it, and nothing for refinement to align). Monotone: more cells asked,
    smaller cells; the place config's choice reaches its count on the maupertuis sample."""
    from segloc_core.maps.build import scene_depth
    from segloc_core.maps.cli import PLACE_CONFIG
    from segloc_core.maps.colmap import colmap_geometry
    from segloc_core.maps.place_model import cell_size_for, cells_seen, place_cells_for
    from segloc_core.net.train_config import TrainConfig

    geo = colmap_geometry(MAUPERTUIS / "colmap" / "reconstruction", MAUPERTUIS / "colmap" / "images")
    depth = scene_depth(geo)
    sizes = [cell_size_for(geo, n) for n in (5, 20, 50)]
    assert depth >= sizes[0] >= sizes[1] >= sizes[2] > 0 and sizes[0] > sizes[2]
    for n, cell in zip((5, 20, 50), sizes):
        seen = cells_seen(geo, cell)
        assert np.median(seen[seen > 0]) >= n
        if cell < depth:  # the largest such cell on the grid: one step coarser sees fewer
            assert np.median(cells_seen(geo, cell * 2 ** (1 / 8))[seen > 0]) < n
    cfg = TrainConfig.load(PLACE_CONFIG)
    cells = place_cells_for(geo, cfg)
    assert cfg.geometry.cells_per_image > 0 and abs(cells.cell_m - cell_size_for(geo, cfg.geometry.cells_per_image)) \
        <= 1e-3 * cells.cell_m


def test_votes_read_each_images_own_camera():
    """Mixed cameras (issue 14's image folders): image 2 has camera B (640x480) while images 0-1
    share camera A (320x240). The vote lookup used the camera at the image's *unique-camera index*
    (1) of the per-image camera list, i.e. image 1's camera A for image 2, and read its labels at
    the wrong pixels (here: label 1 instead of 0)."""
    from types import SimpleNamespace

    from segloc_core.geometry import Camera, Pose
    from segloc_core.maps.build import MapGeometry, SegmenterLookup, _camera_table

    A = Camera("PINHOLE", 320, 240, np.array([300.0, 300.0, 160.0, 120.0]))
    B = Camera("PINHOLE", 640, 480, np.array([600.0, 600.0, 320.0, 240.0]))
    probs = np.zeros((2, 120, 160), np.float32)
    probs[0, :, :80], probs[1, :, 80:] = 1.0, 1.0  # label 0 on the left half, 1 on the right

    class HalfSegmenter:
        K, model_hash = 2, "halves"

        def segment(self, rgb, frame=None):
            return SimpleNamespace(levels=[SimpleNamespace(probs=probs)], descriptor=np.zeros(4, np.float32))

        def level_camera(self, camera, level):
            return camera.scaled_to(160, 120)

    geo = MapGeometry(np.zeros((1, 3)), Observations(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2))),
                      ("a0", "a1", "b2"), (Pose.identity(),) * 3, (A, A, B),
                      lambda i: np.zeros((10, 10, 3), np.uint8), "test")
    _, camera_index = _camera_table(geo.cameras)
    assert list(camera_index) == [0, 0, 1]
    lookup = SegmenterLookup(HalfSegmenter(), geo)
    uv = np.array([[300.0, 240.0]])  # left of B's centre: label 0 (camera A reads it right of centre)
    assert lookup(2, uv).argmax(1).tolist() == [0]
    assert lookup(0, np.array([[150.0, 120.0]])).argmax(1).tolist() == [0]
