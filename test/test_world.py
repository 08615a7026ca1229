"""Procedural world: geometry/pose/depth consistency, conditions, determinism, export, bag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segloc_core.geometry import Pose
from segloc_core.world import (
    CONDITIONS,
    WorldConfig,
    correspondences,
    correspondences_from_depth,
    load_world,
    materials,
    render_tiny_world,
    render_world,
    write_world_bag,
)
from segloc_core.world.render import Renderer, gl_projection
from segloc_core.world.scene import ROAD_Z_M, SIDEWALK_Z_M, build_static_scene, dynamic_mesh


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return load_world(render_tiny_world(tmp_path_factory.mktemp("world") / "tiny"))


def _world_points(rec, depth):
    """Back-project every pixel with depth to world coordinates (N,3) and its pixel index."""
    ys, xs = np.nonzero(depth > 0)
    z = depth[ys, xs].astype(np.float64)
    rays = rec.camera.unproject(np.stack([xs + 0.5, ys + 0.5], 1))
    return rec.T_world_cam.transform(rays * z[:, None]), ys, xs


def test_layout_and_records(tiny):
    assert tiny.conditions == ["summer", "winter", "night"] and tiny.mapping_condition == "summer"
    recs = tiny.frames("winter")
    assert len(recs) == 12
    stamps = [r.stamp_ns for r in recs]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    r = recs[5]
    rgb, depth, ids = tiny.rgb(r), tiny.depth(r), tiny.ids(r)
    assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
    assert depth.dtype == np.float32 and ids.dtype == np.uint16
    sky = ids == materials.SKY
    assert np.all(depth[sky] == 0) and (depth > 0).mean() > 0.5  # 0 = sky or beyond 65.5 m
    present = set(np.unique(ids).tolist())
    assert {materials.ROAD, materials.SIDEWALK, materials.SKY} <= present <= set(materials.CLASS_NAMES)
    np.testing.assert_allclose((r.T_cam_world @ r.T_world_cam).matrix(), np.eye(4), atol=1e-9)
    assert (tiny.root / "sheet.png").stat().st_size > 10_000
    # the kapture pose file round-trips the camera pose: the camera sits at mount height above the road
    base = r.T_world_cam @ tiny.T_base_cam.inv()
    assert abs(base.t[2]) < 1e-6 and abs(r.T_world_cam.t[2] - 1.5) < 0.05


def test_depth_matches_known_surfaces(tiny):
    """Absolute check of pose + intrinsics + depth: road pixels back-project onto the road plane."""
    for cond in tiny.conditions:
        r = tiny.frames(cond)[4]
        depth, ids = tiny.depth(r), tiny.ids(r)
        near = (depth > 0) & (depth < 25)
        X, ys, xs = _world_points(r, np.where(near, depth, 0))
        lab = ids[ys, xs]
        road = (lab == materials.ROAD) | (lab == materials.MARKING)
        walk = lab == materials.SIDEWALK
        assert road.sum() > 500 and walk.sum() > 50
        # depth is stored in millimetres: 0.5 mm rounding, plus pixel quantization of the surface id
        assert np.percentile(np.abs(X[road, 2] - ROAD_Z_M), 99) < 0.003
        assert np.median(np.abs(X[walk, 2] - SIDEWALK_Z_M)) < 0.003


def _bilinear_inverse_depth(depth: np.ndarray, ids: np.ndarray, uv: np.ndarray):
    """Depth at sub-pixel uv from the 4 surrounding pixel centres, interpolating 1/z (affine in
    pixel coordinates on a plane); `ok` where the 4 pixels show one surface with depth."""
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, depth.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, depth.shape[0] - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    d = np.stack([depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]], 1).astype(np.float64)
    i = np.stack([ids[y0, x0], ids[y0, x0 + 1], ids[y0 + 1, x0], ids[y0 + 1, x0 + 1]], 1)
    ok = np.all(d > 0, 1) & np.all(i == i[:, :1], 1)
    inv = 1.0 / np.where(d > 0, d, 1.0)
    w = np.hstack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    return 1.0 / (inv * w).sum(1), ok


def test_correspondences_consistent_within_a_pixel(tiny):
    """A pixel of a, back-projected with a's depth, lands at uv_b in b; b's own depth there,
    back-projected and moved to a, lands on the same pixel of a (same and across traversals)."""
    pairs = [(tiny.frames("summer")[3], tiny.frames("summer")[4]),
             (tiny.frames("summer")[6], tiny.frames("night")[6])]
    for ra, rb in pairs:
        uv_a, uv_b = correspondences(tiny, ra, rb)
        in_view, _ = correspondences(tiny, ra, rb, tol_abs_m=1e9)  # no visibility check
        assert len(uv_a) > 2000 and len(uv_a) > 0.8 * len(in_view)
        z, ok = _bilinear_inverse_depth(tiny.depth(rb), tiny.ids(rb), uv_b)
        assert ok.mean() > 0.6  # interior of surfaces (id edges are frequent at 160x120)
        p_b = rb.camera.unproject(uv_b[ok]) * z[ok, None]
        uv_back, valid = ra.camera.project(ra.T_cam_world.transform(rb.T_world_cam.transform(p_b)))
        err = np.linalg.norm(uv_back - uv_a[ok], axis=1)
        assert valid.mean() > 0.99
        assert np.median(err) < 0.1 and np.percentile(err, 95) < 1.0, np.percentile(err, [50, 95, 99])


def test_correspondences_reject_occluded(tiny):
    """A frame against itself maps every pixel onto itself; against a camera behind a wall, none."""
    r = tiny.frames("summer")[2]
    d = tiny.depth(r)
    uv_a, uv_b = correspondences(tiny, r, r, stride=2)
    np.testing.assert_allclose(uv_a, uv_b, atol=1e-6)
    assert len(uv_a) == int((d[1::2, 1::2] > 0).sum())
    # a camera turned around sees none of these points
    flip = Pose(np.diag([-1.0, 1.0, -1.0]), np.zeros(3)) @ r.T_cam_world
    ua, _ = correspondences_from_depth(d, r.camera, r.T_cam_world, d, r.camera, flip)
    assert len(ua) == 0


def test_conditions_change_pixels_not_depth():
    scene = build_static_scene(200.0, seed=5)
    cfg = WorldConfig(width=160, height=120)
    cam = cfg.camera()
    xy, tg = scene.centerline.frame(20.0, -1.6)
    T_world_base = np.eye(4)
    T_world_base[:3, :3] = [[tg[0], -tg[1], 0], [tg[1], tg[0], 0], [0, 0, 1]]
    T_world_base[:2, 3] = xy
    T_cam_world = np.linalg.inv(T_world_base @ cfg.T_base_cam().matrix())
    r = Renderer(scene, 160, 120)
    try:
        r.set_dynamic(dynamic_mesh(scene, scene.dynamic))
        out = {}
        for name in ("summer", "overcast", "autumn", "winter", "night"):
            r.set_condition(CONDITIONS[name])
            out[name] = r.render(T_cam_world, tuple(cam.params))
    finally:
        r.release()
    ref = out["summer"]
    for name, fr in out.items():
        if name == "summer":
            continue
        diff = np.abs(fr.rgb.astype(int) - ref.rgb.astype(int)).mean()
        assert diff > 8, (name, diff)
        # winter's bare crowns let the background through; everything else is identical
        keep = ~((fr.ids == materials.FOLIAGE) | (ref.ids == materials.FOLIAGE))
        assert keep.mean() > 0.8
        np.testing.assert_array_equal(fr.depth[keep], ref.depth[keep])
        np.testing.assert_array_equal(fr.ids[keep], ref.ids[keep])


def test_projection_matches_camera():
    """The GL projection puts camera points exactly where Camera.project does (COLMAP pixels)."""
    cam = WorldConfig(width=320, height=240).camera()
    rng = np.random.default_rng(0)
    p = np.column_stack([rng.uniform(-5, 5, 50), rng.uniform(-3, 3, 50), rng.uniform(1, 50, 50)])
    P = gl_projection(*cam.params, 320, 240)
    clip = np.column_stack([p, np.ones(50)]) @ P.T
    ndc = clip[:, :3] / clip[:, 3:]
    u = (ndc[:, 0] + 1) / 2 * 320
    v = 240 - (ndc[:, 1] + 1) / 2 * 240  # GL window y is up; the read-back is flipped
    uv, _ = cam.project(p)
    np.testing.assert_allclose(np.column_stack([u, v]), uv, atol=1e-9)


def test_same_seed_same_images_and_cache(tmp_path):
    cfg = WorldConfig(seed=11, loop_length_m=200.0, width=160, height=120, conditions=("summer", "night"),
                      max_frames=3)
    a = load_world(render_world(cfg, tmp_path / "a", progress=False))
    b = load_world(render_world(cfg, tmp_path / "b", progress=False))
    c = load_world(render_world(WorldConfig(**{**cfg.to_json(), "seed": 12,
                                               "conditions": ("summer", "night")}), tmp_path / "c", progress=False))
    for cond in ("summer", "night"):
        for ra, rb, rc in zip(a.frames(cond), b.frames(cond), c.frames(cond)):
            np.testing.assert_array_equal(a.rgb(ra), b.rgb(rb))
            np.testing.assert_array_equal(a.ids(ra), b.ids(rb))
            np.testing.assert_allclose(ra.T_cam_world.matrix(), rb.T_cam_world.matrix(), atol=1e-12)
            assert np.abs(a.rgb(ra).astype(int) - c.rgb(rc).astype(int)).mean() > 5
    meta = a.root / "world.json"
    before = meta.stat().st_mtime_ns
    assert render_world(cfg, a.root, progress=False) == a.root
    assert meta.stat().st_mtime_ns == before  # cached: nothing re-rendered
    assert json.loads(meta.read_text())["config_hash"] == cfg.hash()


def test_odometry_drifts_but_follows(tiny):
    o = tiny.odometry("winter")
    assert np.all(np.diff(o.stamps_ns) == 20_000_000)  # 50 Hz
    np.testing.assert_allclose(o.T_odom_base[0], np.eye(4), atol=1e-12)
    T_gt = np.linalg.inv(o.T_world_base[0]) @ o.T_world_base[-1]  # ground-truth motion in odom frame
    dist = np.linalg.norm(T_gt[:3, 3])
    err = np.linalg.norm(T_gt[:2, 3] - o.T_odom_base[-1][:2, 3])
    assert dist > 30 and 1e-4 < err < 0.05 * dist


def test_bag_reads_back(tiny, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.interfaces import QosDurability
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    frames = tiny.frames("night")[:5]
    out = write_world_bag(tiny, "night", tmp_path / "bag", max_frames=5)
    ts = get_typestore(Stores.ROS2_KILTED)
    counts: dict[str, int] = {}
    with Reader(out) as rd:
        types = {c.topic: c.msgtype for c in rd.connections}
        assert types == {"/camera/image_raw": "sensor_msgs/msg/Image",
                         "/camera/camera_info": "sensor_msgs/msg/CameraInfo", "/tf": "tf2_msgs/msg/TFMessage",
                         "/tf_static": "tf2_msgs/msg/TFMessage", "/ground_truth/pose": "geometry_msgs/msg/PoseStamped"}
        static = next(c for c in rd.connections if c.topic == "/tf_static")
        assert static.ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
        img_stamps = []
        for conn, t, raw in rd.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            msg = ts.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == "/tf_static":
                assert msg.transforms[0].header.frame_id == "base_link"
                assert msg.transforms[0].child_frame_id == "camera_optical_frame"
                continue
            hdr = msg.transforms[0].header if conn.topic == "/tf" else msg.header
            assert hdr.stamp.sec * 10**9 + hdr.stamp.nanosec == t
            if conn.topic == "/camera/image_raw":
                k = len(img_stamps)
                img_stamps.append(t)
                assert msg.encoding == "rgb8" and msg.header.frame_id == "camera_optical_frame"
                np.testing.assert_array_equal(msg.data.reshape(msg.height, msg.width, 3), tiny.rgb(frames[k]))
            elif conn.topic == "/camera/camera_info":
                np.testing.assert_allclose(msg.k.reshape(3, 3), frames[0].camera.to_opencv_K())
            elif conn.topic == "/tf":
                assert (msg.transforms[0].header.frame_id, msg.transforms[0].child_frame_id) == ("odom", "base_link")
            elif conn.topic == "/ground_truth/pose":
                assert msg.header.frame_id == "map"
                k = [f.stamp_ns for f in frames].index(t)
                T_world_base = frames[k].T_world_cam @ tiny.T_base_cam.inv()
                np.testing.assert_allclose([msg.pose.position.x, msg.pose.position.y], T_world_base.t[:2], atol=1e-9)
    assert img_stamps == [f.stamp_ns for f in frames]
    assert counts["/camera/image_raw"] == counts["/camera/camera_info"] == counts["/ground_truth/pose"] == 5
    assert counts["/tf_static"] == 1
    span_s = (frames[-1].stamp_ns - frames[0].stamp_ns) / 1e9
    assert counts["/tf"] >= 49 * span_s
    # independent reader
    mcap_file = next(Path(out).glob("*.mcap"))
    seen = {}
    with open(mcap_file, "rb") as f:
        for _, channel, message, ros_msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            seen[channel.topic] = seen.get(channel.topic, 0) + 1
            if channel.topic == "/camera/image_raw":
                st = ros_msg.header.stamp
                assert st.sec * 10**9 + st.nanosec == message.log_time
                assert ros_msg.encoding == "rgb8" and len(ros_msg.data) == 3 * ros_msg.width * ros_msg.height
    assert seen == counts


def test_cli_render_and_bag(tmp_path):
    from segloc_core.cli import main

    out = tmp_path / "w"
    assert main(["world", "render", "--out", str(out), "--length", "200", "--width", "160", "--height", "120",
                 "--conditions", "summer", "night", "--max-frames", "2"]) == 0
    ds = load_world(out)
    assert [len(ds.frames(c)) for c in ds.conditions] == [2, 2]
    assert main(["world", "bag", "--world", str(out), "--condition", "night", "--out", str(tmp_path / "bags")]) == 0
    assert any((tmp_path / "bags" / "night").glob("*.mcap"))


def test_world_renderer_reproduces_dataset_frames(tiny):
    """Rendering a recorded pose again gives the stored frame (depth to the millimetre)."""
    from segloc_core.world import WorldRenderer

    rec = tiny.frames("winter")[7]
    with WorldRenderer(tiny.config) as wr:
        fr = wr.render("winter", rec.T_cam_world)
    np.testing.assert_array_equal(fr.ids, tiny.ids(rec))
    stored = tiny.depth(rec)
    near = stored > 0
    np.testing.assert_allclose(fr.depth[near], stored[near], atol=6e-4)
    assert np.abs(fr.rgb.astype(int) - tiny.rgb(rec).astype(int)).mean() < 2.5  # only the sensor noise differs


def test_bench_reports_required_figures(capsys):
    from segloc_core.cli import main

    assert main(["bench", "world", "--frames", "5"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("fps_320x240", "fps_640x480", "baseline_sky_only_fps_640x480", "cpu_ms_per_frame_640x480"):
        assert res[key] > 0
    assert res["ratio_to_baseline_640x480"] < 1.0  # the scene costs more than the sky alone


def test_progress_bars_stay_out_of_logs(tiny, tmp_path, capsys):
    """`segloc world bag` draws a progress bar on a terminal; with stderr captured (a log, CI)
    nothing of it may appear: no carriage-return updates."""
    from segloc_core.cli import main

    assert main(["world", "bag", "--world", str(tiny.root), "--condition", "night", "--out", str(tmp_path),
                 "--max-frames", "3"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "msg/s" not in err
