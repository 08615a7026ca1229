"""Training/evaluation image pairs with pixel correspondences: from the world, COLMAP, or synthetic.

SegLoc trains without labels on pairs of images of the same place (other viewpoint, other
condition) and their 2D-2D correspondences. Three sources give the same `PairSet`:
- `world_pairs`: the procedural world's exact depth and poses (`segloc_core.world.correspondences`),
  across conditions; split into train / held-out by location (20 m cells), so held-out metrics
  are measured on places the network never trained on.
- `colmap_pairs`: SfM tracks of a pycolmap reconstruction (users' own images): two images that
  observe the same 3D points correspond at those points' 2D observations.
- `synthetic_pairs`: shifted, re-lit random textures (tests and smoke runs, no data needed).
Pixels follow COLMAP's convention (centre of the top-left pixel at (0.5, 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.progress import progress_bar

SPLIT_CELL_M = 20.0  # side of the square cells that assign places to train / held-out
HELDOUT_EVERY = 5  # one cell in five is held out (a lattice pattern: every row and column alike)


@dataclass(frozen=True)
class PairRecord:
    """Two images (keys into `PairSet.images`) and their correspondences (M,2) float32, input pixels."""

    key_a: str
    key_b: str
    uv_a: np.ndarray
    uv_b: np.ndarray


@dataclass
class PairSet:
    """Images (H,W,3) uint8 at the model's input size, camera poses T_world_cam (4,4), conditions."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    T_world_cam: dict[str, np.ndarray] = field(default_factory=dict)
    condition: dict[str, str] = field(default_factory=dict)
    pairs: list[PairRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)


def resize_image(rgb: np.ndarray, size_wh: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """Resize to size (w,h) (area filter when shrinking); returns image and the x/y scale factors."""
    import cv2

    h, w = rgb.shape[:2]
    if (w, h) == tuple(size_wh):
        return rgb, 1.0, 1.0
    interp = cv2.INTER_AREA if size_wh[0] < w else cv2.INTER_LINEAR
    return cv2.resize(rgb, tuple(size_wh), interpolation=interp), size_wh[0] / w, size_wh[1] / h


def in_heldout(center_xyz: np.ndarray) -> bool:
    """Location-based split on the 20 m cell (i, j) of the camera centre (x, y): held out where
    (i + 2 j) mod 5 == 0, which holds out every fifth cell along any straight road."""
    i, j = np.floor(np.asarray(center_xyz[:2], dtype=np.float64) / SPLIT_CELL_M).astype(np.int64)
    return int(i + 2 * j) % HELDOUT_EVERY == 0


def _subsample(uv_a: np.ndarray, uv_b: np.ndarray, max_corr: int, rng: np.random.Generator):
    if len(uv_a) > max_corr:
        idx = rng.choice(len(uv_a), max_corr, replace=False)
        uv_a, uv_b = uv_a[idx], uv_b[idx]
    return uv_a.astype(np.float32), uv_b.astype(np.float32)


def world_pairs(world_dir: Path, size_wh: tuple[int, int], split: str = "train", max_pairs: int = 400,
                conditions: list[str] | None = None, max_corr: int = 512, min_corr: int = 64,
                max_dist_m: float = 4.0, max_angle_deg: float = 30.0, corr_stride: int = 4,
                seed: int = 0) -> PairSet:
    """Cross-condition pairs of the rendered world, of one location split ('train' or 'heldout').

    Each pair: a random frame of condition A (mapping condition in half of the pairs, so the map's
    appearance is always covered) and a frame of another condition B within max_dist_m and
    max_angle_deg, picked at random among those (viewpoint diversity)."""
    from segloc_core.world import correspondences, load_world

    if split not in ("train", "heldout"):
        raise InputError(f"split must be 'train' or 'heldout', got {split!r}")
    ds = load_world(world_dir)
    conds = list(conditions or ds.conditions)
    missing = set(conds) - set(ds.conditions)
    if missing or len(conds) < 2:
        raise InputError(f"world {world_dir} has conditions {ds.conditions}; asked for {conds} (need >= 2)")
    rng = np.random.default_rng(seed)
    frames, centers, axes = {}, {}, {}
    for c in conds:
        recs = [r for r in ds.frames(c) if in_heldout(r.T_world_cam.t) == (split == "heldout")]
        frames[c] = recs
        Tw = [r.T_world_cam for r in recs]
        centers[c] = np.array([T.t for T in Tw]).reshape(-1, 3)
        axes[c] = np.array([T.R[:, 2] for T in Tw]).reshape(-1, 3)
    out = PairSet()
    tries = 0
    with progress_bar(total=max_pairs, desc=f"world pairs ({split})", leave=False) as bar:
        while len(out.pairs) < max_pairs and tries < max_pairs * 5:
            tries += 1
            ca = ds.mapping_condition if rng.random() < 0.5 and ds.mapping_condition in conds else rng.choice(conds)
            cb = rng.choice([c for c in conds if c != ca])
            if not len(frames[ca]) or not len(frames[cb]):
                continue
            ia = int(rng.integers(len(frames[ca])))
            dist = np.linalg.norm(centers[cb] - centers[ca][ia], axis=1)
            ang = np.degrees(np.arccos(np.clip(axes[cb] @ axes[ca][ia], -1, 1)))
            cand = np.flatnonzero((dist < max_dist_m) & (ang < max_angle_deg))
            if not len(cand):
                continue
            ra, rb = frames[ca][ia], frames[cb][int(rng.choice(cand))]
            uv_a, uv_b = correspondences(ds, ra, rb, stride=corr_stride)
            if len(uv_a) < min_corr:
                continue
            keys = []
            for rec in (ra, rb):
                key = f"{rec.condition}/{rec.index}"
                if key not in out.images:
                    img, sx, sy = resize_image(ds.rgb(rec), size_wh)
                    out.images[key] = img
                    out.T_world_cam[key] = rec.T_world_cam.matrix()
                    out.condition[key] = rec.condition
                keys.append(key)
            sx, sy = size_wh[0] / ra.camera.width, size_wh[1] / ra.camera.height
            tx, ty = size_wh[0] / rb.camera.width, size_wh[1] / rb.camera.height
            uv_a, uv_b = _subsample(uv_a * (sx, sy), uv_b * (tx, ty), max_corr, rng)
            out.pairs.append(PairRecord(keys[0], keys[1], uv_a, uv_b))
            bar.update(1)
    if not out.pairs:
        raise InputError(f"no {split} pairs with >= {min_corr} correspondences found in world {world_dir}")
    return out


def colmap_pairs(model_dir: Path, image_dir: Path, size_wh: tuple[int, int], max_pairs: int = 400,
                 min_shared: int = 64, max_corr: int = 512, seed: int = 0) -> PairSet:
    """Pairs from a COLMAP/pycolmap reconstruction: images sharing >= min_shared 3D points,
    corresponding at those points' observations (SfM tracks)."""
    import cv2
    import pycolmap

    model_dir, image_dir = Path(model_dir), Path(image_dir)
    if not model_dir.is_dir():
        raise InputError(f"COLMAP model folder {model_dir} does not exist")
    rec = pycolmap.Reconstruction(str(model_dir))
    rng = np.random.default_rng(seed)
    obs: dict[int, dict[int, np.ndarray]] = {}  # image_id -> point3D_id -> xy
    for iid, img in rec.images.items():
        obs[iid] = {p.point3D_id: np.asarray(p.xy) for p in img.points2D if p.has_point3D()}
    ids = sorted(obs)
    cand = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            shared = obs[a].keys() & obs[b].keys()
            if len(shared) >= min_shared:
                cand.append((a, b, sorted(shared)))
    if not cand:
        raise InputError(f"no image pair in {model_dir} shares >= {min_shared} 3D points")
    order = rng.permutation(len(cand))[:max_pairs]
    out = PairSet()
    for j in progress_bar(order, desc="colmap pairs", leave=False):
        a, b, shared = cand[j]
        keys, scales = [], []
        for iid in (a, b):
            img = rec.images[iid]
            key = img.name
            path = image_dir / img.name
            cam = rec.cameras[img.camera_id]
            scales.append((size_wh[0] / cam.width, size_wh[1] / cam.height))
            if key not in out.images:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise InputError(f"cannot read image {path} (listed in {model_dir})")
                out.images[key] = resize_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size_wh)[0]
                out.T_world_cam[key] = np.linalg.inv(_cam_from_world(img))
                out.condition[key] = str(Path(img.name).parent)
            keys.append(key)
        uv_a = np.array([obs[a][p] for p in shared]) * scales[0]
        uv_b = np.array([obs[b][p] for p in shared]) * scales[1]
        uv_a, uv_b = _subsample(uv_a, uv_b, max_corr, rng)
        out.pairs.append(PairRecord(keys[0], keys[1], uv_a, uv_b))
    return out


def _cam_from_world(img) -> np.ndarray:
    """4x4 T_cam_world of a pycolmap image (a method since pycolmap 3.12's frames)."""
    m = np.eye(4)
    m[:3] = img.cam_from_world().matrix()
    return m


def synthetic_pairs(n: int, size_wh: tuple[int, int] = (64, 48), max_corr: int = 128,
                    seed: int = 0) -> PairSet:
    """Pairs of a random blob texture and its shifted, re-lit copy; the shift gives exact matches.

    Pair i's cameras sit at x = 20 i metres (pairs are positives, other pairs negatives)."""
    import cv2

    rng = np.random.default_rng(seed)
    w, h = size_wh
    out = PairSet()
    for i in range(n):
        big = rng.random((h + 16, w + 16, 3)).astype(np.float32)
        big = cv2.GaussianBlur(big, (0, 0), 3.0)
        big = (big - big.min()) / (np.ptp(big) + 1e-6)
        dx, dy = (int(v) for v in rng.integers(-6, 7, 2))
        a = big[8:8 + h, 8:8 + w]
        b = big[8 + dy:8 + dy + h, 8 + dx:8 + dx + w]
        b = np.clip(b * rng.uniform(0.6, 1.2) + rng.uniform(-0.1, 0.1, 3), 0, 1)
        uv_a = np.stack([rng.uniform(8, w - 8, max_corr), rng.uniform(8, h - 8, max_corr)], 1)
        uv_b = uv_a - (dx, dy)
        for key, img in ((f"syn{i}a", a), (f"syn{i}b", b)):
            out.images[key] = (img * 255).astype(np.uint8)
            T = np.eye(4)
            T[0, 3] = 20.0 * i
            out.T_world_cam[key] = T
            out.condition[key] = "a" if key.endswith("a") else "b"
        out.pairs.append(PairRecord(f"syn{i}a", f"syn{i}b", uv_a.astype(np.float32), uv_b.astype(np.float32)))
    return out
