"""Test inputs for the refiner: oracle probability maps and labeled map points (`segloc bench
refine` measures on the product's own oracle segmenter and map instead).

`oracle_levels` turns a ground-truth label image into the per-level maps a perfect-ish network would
give (one-hot, area-pooled to each level, blurred, a region occluded). `PlaneScene` is a tiny analytic
scene (textured planes, ray cast per pixel) so tests run without the rendered world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from segloc_core.geometry import Camera, Pose
from segloc_core.localize.refine import LabeledPoints, LevelInput
from segloc_core.reductions import level_reductions

LEVEL_SIZES_320: tuple[tuple[int, int], ...] = ((40, 30), (80, 60), (160, 120), (320, 240))


@dataclass(frozen=True)
class PlaneScene:
    """Axis-aligned planes n . x = d (world metres), each tiled with square cells of random labels."""

    normals: np.ndarray  # (P, 3)
    offsets: np.ndarray  # (P,)
    cell_m: float
    table: np.ndarray  # (P, 64, 64) labels

    @classmethod
    def street(cls, K: int, seed: int = 0, cell_m: float = 1.0) -> PlaneScene:
        """A street canyon along +z: ground (y = 1.5, y down), walls at x = +-5, an end wall at z = 30."""
        rng = np.random.default_rng(seed)
        normals = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float64)
        offsets = np.array([1.5, -5.0, 5.0, 30.0])
        return cls(normals, offsets, cell_m, rng.integers(0, K, size=(4, 64, 64)))

    def render(self, camera: Camera, T_cam_world: Pose) -> tuple[np.ndarray, np.ndarray]:
        """(labels (H,W) int64, z-depth (H,W) float32 metres, 0 where no plane is hit)."""
        rays_cam = camera.unproject(camera.pixel_centers().reshape(-1, 2))
        T_wc = T_cam_world.inv()
        d = rays_cam @ T_wc.R.T
        o = T_wc.t
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (self.offsets[None] - o @ self.normals.T) / (d @ self.normals.T)  # (M, P)
        s[~np.isfinite(s) | (s <= 1e-6)] = np.inf
        plane = np.argmin(s, axis=1)
        depth = s[np.arange(len(s)), plane]
        hit = np.isfinite(depth)
        X = o + d * np.where(hit, depth, 0.0)[:, None]
        # in-plane coordinates: the two axes orthogonal to the plane normal
        axes = np.array([[0, 2], [1, 2], [1, 2], [0, 1]])[plane]
        uvw = np.take_along_axis(X, axes, axis=1)
        ij = np.floor(uvw / self.cell_m).astype(np.int64) % self.table.shape[1]
        labels = self.table[plane, ij[:, 0], ij[:, 1]]
        H, W = camera.height, camera.width
        return labels.reshape(H, W), np.where(hit, depth, 0.0).reshape(H, W).astype(np.float32)


def map_points_from_depth(camera: Camera, T_cam_world: Pose, labels: np.ndarray, depth: np.ndarray,
                          num: int, rng: np.random.Generator) -> LabeledPoints:
    """Back-project `num` random pixels with depth into world points carrying their labels."""
    ii, jj = np.nonzero(depth > 0)
    pick = rng.choice(len(ii), size=min(num, len(ii)), replace=False)
    ii, jj = ii[pick], jj[pick]
    uv = np.stack([jj + 0.5, ii + 0.5], axis=-1)
    p_cam = camera.unproject(uv) * depth[ii, jj, None]
    return LabeledPoints(T_cam_world.inv().transform(p_cam), labels[ii, jj].astype(np.int64))


def oracle_levels(labels: np.ndarray, K: int, camera: Camera,
                  sizes: tuple[tuple[int, int], ...] = LEVEL_SIZES_320, blur_px: float = 1.0,
                  occlude: tuple[int, int, int, int] | None = None, occluder_label: int = 0,
                  quantize: bool = False) -> list[LevelInput]:
    """Per-level maps from a label image at the finest size: one-hot, area-pooled, blurred.

    occlude (x0, y0, x1, y1) in finest-level pixels is painted with `occluder_label` (as a foreground
    object the map does not contain). quantize gives uint8 p*255 maps as the network node sends.
    """
    labels = np.asarray(labels).copy()
    H, W = labels.shape
    if occlude is not None:
        x0, y0, x1, y1 = occlude
        labels[y0:y1, x0:x1] = occluder_label
    out = []
    for w, h in sizes:
        f = W // w
        if f * w != W or f * h != H:
            raise ValueError(f"level {w}x{h} does not divide {W}x{H}")
        # area pooling of the one-hot map = class histogram per f x f block
        # only the classes present are pooled and blurred; the others stay exactly 0
        present, compact = np.unique(labels, return_inverse=True)
        block = (np.arange(H)[:, None] // f) * w + np.arange(W)[None] // f
        counts = np.zeros((len(present), h * w), np.float32)
        np.add.at(counts, (compact.reshape(-1), block.reshape(-1)), 1.0)
        sub = counts.reshape(len(present), h, w) / np.float32(f * f)
        if blur_px > 0:
            sub = gaussian_filter1d(sub, blur_px, axis=1, mode="nearest", truncate=2.5)
            sub = gaussian_filter1d(sub, blur_px, axis=2, mode="nearest", truncate=2.5)
        probs = np.zeros((K, h, w), np.float32)
        probs[present] = sub
        if quantize:
            probs = np.round(probs * 255).astype(np.uint8)
        out.append(LevelInput(probs, level_reductions(probs), camera.scaled_to(w, h)))
    return out
