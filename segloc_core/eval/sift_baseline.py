"""The classical baseline beside segloc: SIFT + PnP with pycolmap (`segloc eval --method sift`).

What a user would otherwise pick, measured on the same queries and the same retrieval:
- Its map: the mapping images (`--database`, a kapture or COLMAP folder with poses: what the segloc
  map was built from) as SIFT features matched with their `overlap` next images in name order and
  triangulated with the poses held fixed (pycolmap). Kept: each triangulated keypoint's position in
  the world and its 128-byte descriptor, per database image. Cached in `<SEGLOC_HOME>/sift/` as .npz.
- A query: SIFT at full resolution; the database images retrieved by segloc's own retrieval (the
  segloc map's top-k images, each stood in for by the SIFT database image with the nearest camera
  centre), so the two methods differ only after retrieval; ratio-test (0.8) and mutual nearest
  neighbour matching of the query's descriptors to each of those images' triangulated ones; PnP with
  LO-RANSAC and refinement (`pycolmap.estimate_and_refine_absolute_pose`), accepted with at least
  `min_inliers` inliers.
What it costs (`SiftMap.nbytes`): 12 bytes of position per point plus 128 bytes of descriptor per
observation, against segloc's label per point; and privacy: SIFT descriptors with their positions
can be inverted into recognisable images of the place (Pittaluga et al., "Revealing scenes by
inverting structure from motion reconstructions", CVPR 2019), segloc's map cannot.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose

RATIO = 0.8
SIFT_MAP_VERSION = 1  # part of the cache key: bump when the map's construction changes
PRIVACY = ("SIFT descriptors + 3D positions: invertible into images of the place (Pittaluga et al., "
           "CVPR 2019); segloc stores one label per point")


@dataclass(frozen=True)
class SiftMap:
    """Per database image: camera centre, triangulated keypoints' world points and descriptors."""

    names: tuple[str, ...]
    centres: np.ndarray  # (N, 3) world
    offsets: np.ndarray  # (N + 1,) rows of image i: offsets[i]:offsets[i+1]
    xyz: np.ndarray  # (M, 3) float32, world point of each kept observation
    descriptors: np.ndarray  # (M, 128) uint8
    point_ids: np.ndarray  # (M,) int64, the 3D point each observation belongs to

    @property
    def points(self) -> int:
        return len(np.unique(self.point_ids))

    @property
    def nbytes(self) -> int:
        """Bytes of the map as a localizer needs it: positions once per point, descriptors per observation."""
        return int(12 * len(np.unique(self.point_ids)) + 128 * len(self.point_ids))

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.xyz[a:b], self.descriptors[a:b]

    def save(self, path: Path) -> None:
        np.savez(path, names=np.array(self.names), centres=self.centres, offsets=self.offsets, xyz=self.xyz,
                 descriptors=self.descriptors, point_ids=self.point_ids)

    @classmethod
    def load(cls, path: Path) -> SiftMap:
        with np.load(path, allow_pickle=False) as z:
            return cls(tuple(str(n) for n in z["names"]), z["centres"], z["offsets"], z["xyz"], z["descriptors"],
                       z["point_ids"])


def build_sift_map(database: Path, work: Path, overlap: int = 10, max_image_size: int = 1600) -> SiftMap:
    """The baseline's map of a posed image set (see the module docstring)."""
    import pycolmap

    from segloc_core.maps.colmap import triangulate_posed
    from segloc_core.maps.query_sets import load_query_set

    images = load_query_set(database)
    if any(q.T_cam_world_gt is None for q in images):
        raise InputError(f"{database}: the SIFT baseline's database needs a pose for every image")
    root = Path(str(images[0].image_path)[: -len(images[0].name)])
    work.mkdir(parents=True, exist_ok=True)
    level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, 1  # COLMAP's per-image INFO lines
    try:
        rec = triangulate_posed(root, [q.name for q in images], [q.T_cam_world_gt for q in images],
                                [q.camera for q in images], work, f"sift:{database}", max_image_size,
                                sequential_overlap=overlap)
    finally:
        pycolmap.logging.minloglevel = level
    db = pycolmap.Database.open(str(work / "database.db"))
    names, centres, offsets, xyz, desc, pids = [], [], [0], [], [], []
    try:
        for image in sorted(rec.images.values(), key=lambda im: im.name):
            keep = [(k, p.point3D_id) for k, p in enumerate(image.points2D) if p.has_point3D()]
            d = np.asarray(db.read_descriptors(image.image_id).data, np.uint8)
            names.append(image.name)
            centres.append(np.asarray(image.projection_center()))
            xyz += [rec.points3D[pid].xyz for _, pid in keep]
            desc.append(d[[k for k, _ in keep]] if keep else np.zeros((0, 128), np.uint8))
            pids += [pid for _, pid in keep]
            offsets.append(offsets[-1] + len(keep))
    finally:
        db.close()
    return SiftMap(tuple(names), np.array(centres, np.float64), np.array(offsets, np.int64),
                   np.array(xyz, np.float32).reshape(-1, 3), np.concatenate(desc).astype(np.uint8),
                   np.array(pids, np.int64))


def cached_sift_map(database: Path, cache_dir: Path, overlap: int = 10) -> SiftMap:
    """`build_sift_map`, cached by the database's pose and camera files (kapture .txt, COLMAP .txt or
    .bin: their contents) and the options."""
    key = hashlib.sha256(json.dumps({"database": str(Path(database).resolve()), "overlap": overlap,
                                     "version": SIFT_MAP_VERSION}).encode())
    for path in sorted(p for ext in ("*.txt", "*.bin") for p in Path(database).rglob(ext)):
        key.update(path.name.encode() + path.read_bytes())
    key = key.hexdigest()[:16]
    path = cache_dir / f"sift-{key}.npz"
    if path.is_file():
        return SiftMap.load(path)
    sift_map = build_sift_map(database, cache_dir / f"sift-{key}", overlap)
    sift_map.save(path)
    return sift_map


def _unit(d: np.ndarray) -> np.ndarray:
    d = d.astype(np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)


def match(query_desc: np.ndarray, db_desc: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """(n, 2) index pairs: Lowe's ratio test on the query's two nearest database descriptors and
    mutual nearest neighbours (descriptors compared as unit vectors)."""
    if len(query_desc) == 0 or len(db_desc) < 2:
        return np.zeros((0, 2), np.int64)
    q, d = _unit(query_desc), _unit(db_desc)
    dist = np.maximum(2.0 - 2.0 * (q @ d.T), 0.0)  # squared distance of unit vectors
    two = np.argpartition(dist, 1, axis=1)[:, :2]
    d2 = np.take_along_axis(dist, two, axis=1)
    order = np.argsort(d2, axis=1)
    best = np.take_along_axis(two, order[:, :1], axis=1)[:, 0]
    d_sorted = np.take_along_axis(d2, order, axis=1)
    ok = d_sorted[:, 0] < (ratio ** 2) * d_sorted[:, 1]
    mutual = np.argmin(dist, axis=0)[best] == np.arange(len(q))
    keep = ok & mutual
    return np.stack([np.flatnonzero(keep), best[keep]], axis=1)


@dataclass(frozen=True)
class SiftFix:
    T_cam_world: Pose | None
    inliers: int
    matches: int


class SiftLocalizer:
    """SIFT + PnP against a SiftMap (see the module docstring)."""

    def __init__(self, sift_map: SiftMap, min_inliers: int = 12, max_error_px: float = 8.0):
        import pycolmap

        self.map = sift_map
        self.min_inliers = min_inliers
        options = pycolmap.FeatureExtractionOptions()
        options.sift.peak_threshold = 0.002  # as the map's extraction (maps.colmap)
        self.sift = pycolmap.Sift(options)
        self.estimation = pycolmap.AbsolutePoseEstimationOptions()
        self.estimation.ransac.max_error = max_error_px

    def images_near(self, T_cam_world: Pose) -> int:
        return int(np.argmin(np.linalg.norm(self.map.centres - T_cam_world.center(), axis=1)))

    def localize(self, gray: np.ndarray, camera: Camera, retrieved: list[Pose]) -> SiftFix:
        """Pose of the image `gray` (H, W uint8) from the database images nearest the retrieved poses."""
        import pycolmap

        keypoints, descriptors = self.sift.extract(np.ascontiguousarray(gray, np.float32) / 255.0)
        # each retrieved image on its own (as hloc pairs do): a point seen by several of them would
        # otherwise fail the ratio test against its own copies
        points: dict[int, np.ndarray] = {}  # query keypoint -> world point
        for i in dict.fromkeys(self.images_near(T) for T in retrieved):
            xyz_i, desc_i = self.map.image(i)
            for k, j in match(np.asarray(descriptors), desc_i):
                points.setdefault(int(k), xyz_i[j])
        if len(points) < self.min_inliers:
            return SiftFix(None, 0, len(points))
        cam = pycolmap.Camera(model=camera.model, width=camera.width, height=camera.height,
                              params=list(camera.params))
        kp = np.fromiter(points, np.int64)
        res = pycolmap.estimate_and_refine_absolute_pose(
            np.asarray(keypoints, np.float64)[kp, :2], np.array(list(points.values()), np.float64), cam,
            self.estimation)
        if res is None or res["num_inliers"] < self.min_inliers:
            return SiftFix(None, 0 if res is None else int(res["num_inliers"]), len(points))
        cfw = res["cam_from_world"]
        return SiftFix(Pose.from_quat_xyzw(np.asarray(cfw.rotation.quat), np.asarray(cfw.translation)),
                       int(res["num_inliers"]), len(points))
