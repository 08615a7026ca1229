"""Render the world to a dataset folder and read it back; correspondences between frames.

Layout of a rendered world (`render_world` writes it, `load_world` reads it)::

    <root>/world.json            config, its hash, conditions, mapping condition, id table,
                                 T_base_cam mount; written last, so its presence marks completion
    <root>/sheet.png             contact sheet: the same places under every condition
    <root>/<condition>/          one traversal, a valid kapture 1.1 dataset:
        sensors/sensors.txt      `cam, camera, camera, PINHOLE, W, H, fx, fy, cx, cy` (COLMAP pixels)
        sensors/trajectories.txt `timestamp_ns, cam, qw, qx, qy, qz, tx, ty, tz` = T_cam_world
        sensors/records_camera.txt `timestamp_ns, cam, cam/000000.png`
        sensors/records_data/cam/000000.png   RGB, 8 bit
        depth/000000.png         uint16 z-depth along the optical axis in millimetres
                                 (0 = sky or farther than 65.535 m)
        ids/000000.png           uint16 surface/material id (`materials.CLASS_NAMES`)
        odometry.npz             stamps_ns (N,), T_odom_base (N,4,4) noisy wheel odometry,
                                 T_world_base (N,4,4) ground truth, at the odometry rate

Timestamps are integer nanoseconds (each traversal on its own day). Poses follow the
`segloc_core.geometry` naming: T_cam_world maps world points into the camera optical frame.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segloc_core.errors import InputError, require
from segloc_core.geometry import Camera, Pose
from segloc_core.progress import progress_bar
from segloc_core.world import materials as M
from segloc_core.world.conditions import CONDITIONS, DEFAULT_CONDITIONS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEPTH_SCALE_MM = 1000.0
_T0_NS = 1_750_000_000 * 10**9
_RENDER_SOURCES = ("scene.py", "render.py", "conditions.py", "trajectory.py", "materials.py")


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a rendered world; its hash names the cache."""

    seed: int = 0
    loop_length_m: float = 450.0
    width: int = 320
    height: int = 240
    hfov_deg: float = 80.0
    frame_rate_hz: float = 7.0
    speed_mps: float = 10.0
    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    mapping_condition: str = "summer"
    odom_rate_hz: float = 50.0
    mount_xyz_m: tuple[float, float, float] = (1.5, 0.0, 1.5)  # camera in base_link
    mount_pitch_down_deg: float = 3.0
    lateral_offset_std_m: float = 0.35
    speed_variation: float = 0.15
    max_frames: int | None = None  # cap per traversal (tiny test worlds)

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise InputError(f"unknown condition(s) {unknown}; known: {sorted(CONDITIONS)}")
        if self.mapping_condition not in self.conditions:
            raise InputError(f"mapping_condition {self.mapping_condition!r} not in conditions {self.conditions}")
        if self.width < 16 or self.height < 16:
            raise InputError(f"image size {self.width}x{self.height} too small")
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(self, "mount_xyz_m", tuple(float(x) for x in self.mount_xyz_m))

    def camera(self) -> Camera:
        """PINHOLE camera (COLMAP convention): principal point at the image centre."""
        f = self.width / 2 / np.tan(np.radians(self.hfov_deg) / 2)
        return Camera("PINHOLE", self.width, self.height, np.array([f, f, self.width / 2, self.height / 2]))

    def T_base_cam(self) -> Pose:
        from segloc_core.world.trajectory import mount_matrix

        return Pose.from_matrix(mount_matrix(self.mount_xyz_m, self.mount_pitch_down_deg))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> WorldConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"world config has unknown fields {sorted(unknown)}")
        d = dict(d)
        for k in ("conditions", "mount_xyz_m"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def hash(self) -> str:
        """Config, dataset format and the code that draws the world (scene, shaders, conditions,
        trajectories): a cached render is reused only if all of them are unchanged."""
        h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "config": self.to_json()}, sort_keys=True).encode())
        here = Path(__file__).resolve().parent
        for name in _RENDER_SOURCES:
            h.update((here / name).read_bytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class FrameRecord:
    """One rendered frame; images are loaded on demand through the dataset. Compared and
    hashed by identity (it holds arrays)."""

    index: int
    condition: str
    stamp_ns: int
    T_cam_world: Pose
    camera: Camera
    rgb_path: Path
    depth_path: Path
    ids_path: Path

    @property
    def T_world_cam(self) -> Pose:
        return self.T_cam_world.inv()


class Odometry(NamedTuple):
    """A traversal's wheel odometry at the odometry rate (4x4 arrays, metres)."""

    stamps_ns: np.ndarray     # (N,) int64
    T_odom_base: np.ndarray   # (N,4,4) noisy, drifting; identity at the first stamp
    T_world_base: np.ndarray  # (N,4,4) ground truth at the same stamps


@dataclass
class WorldDataset:
    """A rendered world on disk (see the module docstring for the layout)."""

    root: Path
    config: WorldConfig
    T_base_cam: Pose
    class_names: dict[int, str]
    _frames: dict[str, list[FrameRecord]] = field(default_factory=dict, repr=False)

    @property
    def conditions(self) -> list[str]:
        return list(self.config.conditions)

    @property
    def mapping_condition(self) -> str:
        return self.config.mapping_condition

    def frames(self, condition: str) -> list[FrameRecord]:
        if condition not in self.config.conditions:
            raise InputError(f"condition {condition!r} not in {self.root} (has {self.conditions})")
        if condition not in self._frames:
            self._frames[condition] = _read_kapture(self.root / condition, condition)
        return self._frames[condition]

    def rgb(self, rec: FrameRecord) -> np.ndarray:
        return _imread(rec.rgb_path, color=True)

    def depth(self, rec: FrameRecord) -> np.ndarray:
        """(H,W) float32 metres along the optical axis; 0 where no surface (or beyond 65.5 m)."""
        return _imread(rec.depth_path).astype(np.float32) / np.float32(DEPTH_SCALE_MM)

    def ids(self, rec: FrameRecord) -> np.ndarray:
        return _imread(rec.ids_path)

    def odometry(self, condition: str) -> Odometry:
        path = self.root / condition / "odometry.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                return Odometry(z["stamps_ns"], z["T_odom_base"], z["T_world_base"])
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read odometry {path}: {exc}") from exc


def _imread(path: Path, color: bool = False) -> np.ndarray:
    cv2 = require("cv2")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"cannot read image {path}")
    return np.ascontiguousarray(img[..., ::-1]) if color else img


def _read_kapture(folder: Path, condition: str) -> list[FrameRecord]:
    sensors = folder / "sensors"

    def rows(name: str) -> list[list[str]]:
        path = sensors / name
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        return [[x.strip() for x in ln.split(",")] for ln in lines if ln.strip() and not ln.startswith("#")]

    cams = {r[0]: Camera(r[3], int(r[4]), int(r[5]), np.array([float(x) for x in r[6:]]))
            for r in rows("sensors.txt") if r[2] == "camera"}
    poses = {}
    for r in rows("trajectories.txt"):
        q_wxyz = np.array([float(x) for x in r[2:6]])
        poses[(int(r[0]), r[1])] = Pose.from_quat_xyzw(np.roll(q_wxyz, -1), np.array([float(x) for x in r[6:9]]))
    out = []
    for i, r in enumerate(rows("records_camera.txt")):
        key = (int(r[0]), r[1])
        if key not in poses or r[1] not in cams:
            raise InputError(f"{sensors}: record {r} has no pose or camera")
        stem = Path(r[2]).stem
        out.append(FrameRecord(i, condition, key[0], poses[key], cams[r[1]],
                               sensors / "records_data" / r[2], folder / "depth" / f"{stem}.png",
                               folder / "ids" / f"{stem}.png"))
    return out


def load_world(path: Path | str) -> WorldDataset:
    """Open a rendered world folder (as written by `render_world`)."""
    root = Path(path)
    meta_path = root / "world.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{meta_path} missing or unreadable ({exc}); render it with `segloc world render`") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise InputError(f"{meta_path}: format {meta.get('format')} != {FORMAT_VERSION}; re-render the world")
    config = WorldConfig.from_json(meta["config"])
    return WorldDataset(root, config, Pose.from_matrix(np.array(meta["T_base_cam"])),
                        {int(k): v for k, v in meta["class_names"].items()})


def render_world(config: WorldConfig = WorldConfig(), out_dir: Path | str | None = None,
                 force: bool = False, progress: bool = True) -> Path:
    """Render every traversal of `config` into `out_dir` (default: the default world dir).

    Skips the work when `out_dir` already holds a complete render of the same config hash."""
    from segloc_core import paths

    root = Path(out_dir) if out_dir is not None else paths.world_dir("default")
    root.mkdir(parents=True, exist_ok=True)
    # one renderer per folder at a time: a concurrent caller waits, then finds the cache complete
    with open(root / ".render.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _render_locked(config, root, force, progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _render_locked(config: WorldConfig, root: Path, force: bool, progress: bool) -> Path:
    from segloc_core.world.render import Renderer
    from segloc_core.world.scene import build_static_scene, dynamic_mesh, dynamic_objects
    from segloc_core.world.sheet import write_contact_sheet
    from segloc_core.world.trajectory import make_traversal

    cv2 = require("cv2")
    meta_path = root / "world.json"
    h = config.hash()
    if not force and meta_path.exists():
        try:
            if json.loads(meta_path.read_text()).get("config_hash") == h:
                log.info("world %s already rendered (config %s); skipping", root, h)
                return root
        except ValueError:
            pass
    meta_path.unlink(missing_ok=True)

    scene = build_static_scene(config.loop_length_m, config.seed)
    cam = config.camera()
    T_base_cam = config.T_base_cam().matrix()
    renderer = Renderer(scene, config.width, config.height)
    pool = ThreadPoolExecutor(max_workers=2)  # PNG encoding overlaps the next render
    try:
        for k, cond in enumerate(config.conditions):
            is_map = cond == config.mapping_condition
            trav = make_traversal(scene.centerline, seed=config.seed, index=k, is_mapping=is_map,
                                  speed_mps=config.speed_mps, speed_variation=config.speed_variation,
                                  lateral_offset_std_m=config.lateral_offset_std_m,
                                  rate_hz=config.odom_rate_hz)
            t_frames = np.arange(0.0, trav.t_s[-1], 1.0 / config.frame_rate_hz)
            if config.max_frames is not None:
                t_frames = t_frames[:config.max_frames]
            T_world_cam = trav.base_at(t_frames) @ T_base_cam
            T_cam_world = np.linalg.inv(T_world_cam)
            t0 = _T0_NS + k * 86_400 * 10**9
            stamps = t0 + np.round(t_frames * 1e9).astype(np.int64)
            folder = root / cond
            shutil.rmtree(folder, ignore_errors=True)  # no stale frames from an earlier config
            for sub in ("sensors/records_data/cam", "depth", "ids"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            renderer.set_condition(CONDITIONS[cond])
            renderer.set_dynamic(dynamic_mesh(scene, dynamic_objects(scene, config.seed, k, is_map)))
            futures = []
            for j in progress_bar(range(len(t_frames)), desc=f"render {cond}", unit="frame", enabled=progress):
                fr = renderer.render(T_cam_world[j], tuple(cam.params), frame_seed=float((config.seed * 7919 + k * 104729 + j) % 1000))
                name = f"{j:06d}.png"
                depth_mm = np.where(fr.depth * DEPTH_SCALE_MM < 65535.5, np.round(fr.depth * DEPTH_SCALE_MM), 0).astype(np.uint16)
                futures.append(pool.submit(cv2.imwrite, str(folder / "sensors/records_data/cam" / name), fr.rgb[..., ::-1]))
                futures.append(pool.submit(cv2.imwrite, str(folder / "depth" / name), depth_mm))
                futures.append(pool.submit(cv2.imwrite, str(folder / "ids" / name), fr.ids))
            if not all(f.result() for f in futures):
                raise InputError(f"could not write images under {folder}")
            _write_kapture(folder, cam, stamps, T_cam_world)
            odo = trav.t_s <= t_frames[-1] + 1.0  # odometry covers the frames, plus a second
            np.savez(folder / "odometry.npz", stamps_ns=t0 + np.round(trav.t_s[odo] * 1e9).astype(np.int64),
                     T_odom_base=trav.T_odom_base[odo], T_world_base=trav.T_world_base[odo])
    finally:
        pool.shutdown()
        renderer.release()
    meta = {"format": FORMAT_VERSION, "config_hash": h, "config": config.to_json(),
            "T_base_cam": T_base_cam.tolist(), "class_names": {str(k): v for k, v in M.CLASS_NAMES.items()},
            "loop_length_m": scene.centerline.length_m}
    ds = WorldDataset(root, config, Pose.from_matrix(T_base_cam), dict(M.CLASS_NAMES))
    write_contact_sheet(ds, root / "sheet.png")
    meta_path.write_text(json.dumps(meta, indent=1))
    return root


def _write_kapture(folder: Path, cam: Camera, stamps: np.ndarray, T_cam_world: np.ndarray) -> None:
    s = folder / "sensors"
    head = "# kapture format: 1.1\n"
    p = ", ".join(f"{x:.10g}" for x in cam.params)
    (s / "sensors.txt").write_text(head + "# sensor_device_id, name, sensor_type, [sensor_params]+\n"
                                   f"cam, camera, camera, {cam.model}, {cam.width}, {cam.height}, {p}\n")
    lines = [head + "# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz\n"]
    recs = [head + "# timestamp, device_id, image_path\n"]
    for j, (st, T) in enumerate(zip(stamps, T_cam_world)):
        pose = Pose.from_matrix(T)
        q = pose.quat_xyzw()
        vals = [q[3], q[0], q[1], q[2], *pose.t]
        lines.append(f"{st}, cam, " + ", ".join(f"{v:.12g}" for v in vals) + "\n")
        recs.append(f"{st}, cam, cam/{j:06d}.png\n")
    (s / "trajectories.txt").write_text("".join(lines))
    (s / "records_camera.txt").write_text("".join(recs))


def correspondences_from_depth(depth_a: np.ndarray, cam_a: Camera, T_cam_world_a: Pose,
                               depth_b: np.ndarray, cam_b: Camera, T_cam_world_b: Pose,
                               stride: int = 1, tol_abs_m: float = 0.05, tol_rel: float = 0.01,
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel correspondences a -> b: pixel centres of a (every `stride`-th) with depth,
    back-projected, moved to b, kept where they land inside b in front of the camera and b's
    depth there agrees (the surface is visible in b, not occluded). Fully vectorized.

    Returns uv_a (M,2), uv_b (M,2) float64 in COLMAP pixel convention."""
    h, w = depth_a.shape
    ys, xs = np.mgrid[stride // 2:h:stride, stride // 2:w:stride]
    z = depth_a[ys, xs].astype(np.float64).ravel()
    ok = z > 0
    uv_a = np.stack([xs.ravel()[ok] + 0.5, ys.ravel()[ok] + 0.5], axis=1)
    z = z[ok]
    (fxa, fya), (cxa, cya) = cam_a.focal, cam_a.principal_point
    p_a = np.stack([(uv_a[:, 0] - cxa) / fxa * z, (uv_a[:, 1] - cya) / fya * z, z], axis=1)
    T_ba = T_cam_world_b @ T_cam_world_a.inv()
    p_b = p_a @ T_ba.R.T + T_ba.t
    zb = p_b[:, 2]
    front = zb > 1e-6
    (fxb, fyb), (cxb, cyb) = cam_b.focal, cam_b.principal_point
    zs = np.where(front, zb, 1.0)
    uv_b = np.stack([fxb * p_b[:, 0] / zs + cxb, fyb * p_b[:, 1] / zs + cyb], axis=1)
    hb, wb = depth_b.shape
    inside = front & (uv_b[:, 0] >= 0) & (uv_b[:, 0] < wb) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] < hb)
    # visible if z_b lies within the depths of the 2x2 pixel centres around uv_b (plus tolerance):
    # exact on oblique planes, where one pixel spans a large depth range, and still rejects
    # points behind an occluder
    q = uv_b[inside] - 0.5
    x0 = np.clip(np.floor(q[:, 0]).astype(np.int64), 0, wb - 2)
    y0 = np.clip(np.floor(q[:, 1]).astype(np.int64), 0, hb - 2)
    d4 = np.stack([depth_b[y0, x0], depth_b[y0, x0 + 1], depth_b[y0 + 1, x0], depth_b[y0 + 1, x0 + 1]],
                  axis=1).astype(np.float64)
    has = d4 > 0
    lo = np.where(has, d4, np.inf).min(axis=1)
    hi = np.where(has, d4, -np.inf).max(axis=1)
    zi = zb[inside]
    tol = tol_abs_m + tol_rel * zi
    vis = np.zeros(len(z), bool)
    vis[inside] = has.any(axis=1) & (zi >= lo - tol) & (zi <= hi + tol)
    return uv_a[vis], uv_b[vis]


def correspondences(ds: WorldDataset, rec_a: FrameRecord, rec_b: FrameRecord, stride: int = 1,
                    tol_abs_m: float = 0.05, tol_rel: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Visible correspondences between two frames of a world (same or different traversal)."""
    return correspondences_from_depth(ds.depth(rec_a), rec_a.camera, rec_a.T_cam_world,
                                      ds.depth(rec_b), rec_b.camera, rec_b.T_cam_world,
                                      stride, tol_abs_m, tol_rel)


class WorldRenderer:
    """Render arbitrary views of a world (novel poses, other cameras) with the same scene,
    conditions and movable objects as `render_world` uses for `config`. Holds a GL context:
    call `close()` (or use it as a context manager)."""

    def __init__(self, config: WorldConfig, camera: Camera | None = None) -> None:
        from segloc_core.world.render import Renderer
        from segloc_core.world.scene import build_static_scene

        self.config = config
        self.camera = camera or config.camera()
        if self.camera.model != "PINHOLE":
            raise InputError(f"the renderer draws PINHOLE cameras only, got {self.camera.model}")
        self._scene = build_static_scene(config.loop_length_m, config.seed)
        self._renderer = Renderer(self._scene, self.camera.width, self.camera.height)
        self._condition: str | None = None

    def render(self, condition: str, T_cam_world: Pose):
        """RenderedFrame(rgb (H,W,3) uint8, depth (H,W) float32 metres, ids (H,W) uint16)."""
        from segloc_core.world.scene import dynamic_mesh, dynamic_objects

        if condition != self._condition:
            if condition in self.config.conditions:
                k = self.config.conditions.index(condition)
            elif condition in CONDITIONS:  # a condition no traversal has (training data): its own parked cars
                k = len(self.config.conditions) + list(CONDITIONS).index(condition)
            else:
                raise InputError(f"condition {condition!r} not in {sorted(CONDITIONS)}")
            self._renderer.set_condition(CONDITIONS[condition])
            is_map = condition == self.config.mapping_condition
            self._renderer.set_dynamic(dynamic_mesh(self._scene, dynamic_objects(self._scene, self.config.seed, k, is_map)))
            self._condition = condition
        return self._renderer.render(T_cam_world.matrix(), tuple(self.camera.params))

    def close(self) -> None:
        self._renderer.release()

    def __enter__(self) -> WorldRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
