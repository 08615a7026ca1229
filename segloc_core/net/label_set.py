"""Training images with geometry labels: every pixel labelled by the place its 3D point lies in.

The geometry-label model (`segloc train` with `mode: geometry`) learns to predict, under every
condition, the label of the world cell a pixel sees (`segloc_core.place_labels.PlaceCells`: a hash
of the cell, optionally with a coarser parent cell in the high digit). On the rendered world the 3D point of a pixel
comes from its depth and pose; `jitter_views` re-renders each frame from nearby poses (sideways,
forward, up, yaw and pitch), so that the labels cannot be read off the image position of one
fixed drive (the shortcut the self-supervised model took). Dynamic objects (parked cars, bins) are
not labelled (255): they are not part of the map.

A set is saved as one `.npz` without pickled objects: images JPEG-encoded (quality 90) into one
byte array with offsets, labels and poses as plain arrays (`save_label_set`, `load_label_set`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Pose
from segloc_core.place_labels import PlaceCells
from segloc_core.progress import progress_bar
from segloc_core.world.conditions import CONDITIONS
from segloc_core.world.materials import DYNAMIC_IDS, SKY

IGNORE = 255


@dataclass
class LabelSet:
    """images (N,H,W,3) uint8 RGB; labels (N,H,W) uint8 (IGNORE = unlabelled); names "cond/index[/jK]";
    T_world_cam (N,4,4)."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    T_world_cam: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: np.ndarray) -> LabelSet:
        idx = np.asarray(idx, dtype=np.int64)
        return LabelSet(self.images[idx], self.labels[idx], [self.names[i] for i in idx], self.T_world_cam[idx])


def world_points(ids: np.ndarray, depth: np.ndarray, camera, T_world_cam) -> tuple[np.ndarray, ...]:
    """Per pixel of a rendered view (flattened): world point (H*W, 3), material id (H*W,), and
    whether it is sky (or nothing within the depth range)."""
    z = depth.reshape(-1).astype(np.float64)
    xyz = T_world_cam.transform(camera.unproject(camera.pixel_centers().reshape(-1, 2)) * z[:, None])
    mat = ids.reshape(-1).astype(np.int64)
    return xyz, mat, (mat == SKY) | (z <= 0)


def frame_labels(ids: np.ndarray, depth: np.ndarray, camera, T_world_cam: Pose, cells: PlaceCells,
                 material: bool) -> np.ndarray:
    """(H,W) uint8 geometry labels of one rendered view (K <= 255)."""
    xyz, mat, sky = world_points(ids, depth, camera, T_world_cam)
    labels = cells.labels(xyz, mat if material else None, sky)
    labels[np.isin(mat, DYNAMIC_IDS)] = IGNORE
    return labels.reshape(depth.shape).astype(np.uint8)


def jitter_pose(T_world_cam: Pose, rng: np.random.Generator, shift_m: float, turn_deg: float) -> Pose:
    """A nearby camera: shifted up to shift_m sideways and forward (a fifth of it up/down), turned
    up to turn_deg in yaw (a third of it in pitch), in the camera's own axes."""
    t = rng.uniform(-1, 1, 3) * np.array([shift_m, 0.2 * shift_m, shift_m])
    rot = np.radians(rng.uniform(-1, 1, 3) * np.array([turn_deg / 3, turn_deg, 0.0]))
    return T_world_cam @ Pose.from_rotvec(rot, t)


def world_label_set(world_dir: Path, conditions: list[str], cells: PlaceCells, material: bool = False, jitter_views: int = 1,
                    shift_m: float = 1.5, turn_deg: float = 10.0, seed: int = 0, progress: bool = True,
                    extra_conditions: tuple[str, ...] = ()) -> LabelSet:
    """Every frame of `conditions` of a rendered world plus `jitter_views` re-rendered nearby
    views of each, with their geometry labels; for each of `extra_conditions` (appearances no
    traversal has, e.g. `dusk`), one more view near every frame rendered under that condition,
    named "<extra>/<index>/<source condition>"."""
    from segloc_core.world import load_world
    from segloc_core.world.dataset import WorldRenderer

    if cells.K > IGNORE:
        raise InputError(f"geometry labels are stored as bytes: K={cells.K} must be <= {IGNORE}")
    ds = load_world(world_dir)
    missing = set(conditions) - set(ds.conditions)
    if missing or not conditions:
        raise InputError(f"world {world_dir} has conditions {ds.conditions}; asked for {conditions}")
    rng = np.random.default_rng(seed)
    images, labels, names, poses = [], [], [], []
    recs = [r for c in conditions for r in ds.frames(c)]
    unknown = set(extra_conditions) - set(CONDITIONS)
    if unknown:
        raise InputError(f"unknown extra conditions {sorted(unknown)}; known: {sorted(CONDITIONS)}")
    renderer = WorldRenderer(ds.config) if jitter_views > 0 or extra_conditions else None
    try:
        for rec in progress_bar(recs, desc="geometry labels", enabled=progress, leave=False):
            T = rec.T_world_cam
            images.append(ds.rgb(rec))
            labels.append(frame_labels(ds.ids(rec), ds.depth(rec), rec.camera, T, cells, material))
            names.append(f"{rec.condition}/{rec.index:06d}")
            poses.append(T.matrix())
            for j in range(jitter_views):
                Tj = jitter_pose(T, rng, shift_m, turn_deg)
                view = renderer.render(rec.condition, Tj.inv())
                images.append(view.rgb)
                labels.append(frame_labels(view.ids, view.depth, rec.camera, Tj, cells, material))
                names.append(f"{rec.condition}/{rec.index:06d}/j{j}")
                poses.append(Tj.matrix())
        for extra in extra_conditions:  # grouped by condition: the renderer switches condition once
            for rec in progress_bar(recs, desc=f"{extra} views", enabled=progress, leave=False):
                Tj = jitter_pose(rec.T_world_cam, rng, shift_m, turn_deg)
                view = renderer.render(extra, Tj.inv())
                images.append(view.rgb)
                labels.append(frame_labels(view.ids, view.depth, rec.camera, Tj, cells, material))
                names.append(f"{extra}/{rec.index:06d}/{rec.condition}")
                poses.append(Tj.matrix())
    finally:
        if renderer is not None:
            renderer.close()
    return LabelSet(np.stack(images), np.stack(labels), names, np.stack(poses).astype(np.float64))


def save_label_set(ls: LabelSet, path: Path) -> Path:
    import cv2

    blobs = [cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].ravel() for img in ls.images]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, jpeg=np.concatenate(blobs), offsets=offsets, labels=ls.labels,
                        names=np.array(ls.names, dtype=str), T_world_cam=ls.T_world_cam)
    return path


def load_label_set(path: Path) -> LabelSet:
    import cv2

    try:
        with np.load(path, allow_pickle=False) as z:
            jpeg, off, labels, names, T = z["jpeg"], z["offsets"], z["labels"], z["names"], z["T_world_cam"]
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read label set {path}: {exc}") from exc
    images = []
    for i in range(len(off) - 1):
        img = cv2.imdecode(jpeg[off[i]:off[i + 1]], cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"label set {path}: image {i} does not decode")
        images.append(img[..., ::-1])
    return LabelSet(np.stack(images), labels, [str(n) for n in names], T)
