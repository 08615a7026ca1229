"""The oracle segmenter: place-specific labels from a rendered world's ground truth (a diagnostic).

It stands where the network stands (same `segment` protocol, same four level sizes, reductions and
a global descriptor), but its labels come from the world's rendered surface ids, depth and pose:
each pixel is back-projected to its world point, and its label is a hash of (material id, world
cell of `cell_m`), sky (or nothing within the depth range) its own label. So its figures are the
ceiling every model is measured against: what map build, retrieval, the refiner and the gates
reach when the labels are as place-specific and condition-invariant as labels can be. It needs
ground truth, so it runs only on the default world (or another rendered world), never on a robot,
and it is never a default.

Hierarchy (why): the refiner's coarse levels (20x15, 40x30) cannot resolve 1 m cells, and with flat
1 m labels they pulled a perfect start 0.4-1.4 m off (oracle study, Table 2), while they are what
gives the basin. With `parent_cell_m > 0` a label is `parent * B + child` (B = K / parents), the
parent a hash of the coarser cell: the coarse levels then publish `parents` channels (the parent's
probability, i.e. the fine probabilities summed over each parent's children) and the refiner reads
a point's label there as `label // B` (see `segloc_core.localize.refine`). The map still stores one label.

Probabilities: one-hot labels at the world's resolution, area-pooled to each level, blurred by
`blur_px` pixels of that level and mixed with `uniform` of the uniform distribution, as in the
oracle study. Descriptor: the GPO layout of the network (3x3 half-size windows over the fine labels
at stride 8), with flat rank weights: each window's histogram of the flat (non-hierarchical) cell
labels.

Frames are named as the product's callers know them: a query image path inside the world folder,
a map geometry name "<condition>/<index>", or an image stamp in nanoseconds (a world bag).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from segloc_core.errors import InputError
from segloc_core.geometry import Camera
from segloc_core.net.infer import LevelMaps, SegmentationResult
from segloc_core.net.label_set import world_points
from segloc_core.net.model import ModelConfig, gpo_windows
from segloc_core.place_labels import PlaceCells, level_labels
from segloc_core.reductions import level_reductions
from segloc_core.world import load_world
from segloc_core.world.dataset import FrameRecord


@dataclass(frozen=True)
class OracleSpec:
    """The place cells (`segloc_core.place_labels`; the material id is mixed into the hash) and how
    they become probabilities: coarse_levels = how many of the coarsest levels read the parent
    label, blur and uniform mix."""

    cells: PlaceCells = PlaceCells(1.0, 100, 4.0, 10)
    coarse_levels: int = 2
    blur_px: float = 1.0
    uniform: float = 0.05

    @property
    def K(self) -> int:
        return self.cells.K

    @property
    def hierarchical(self) -> bool:
        return self.cells.hierarchical

    @classmethod
    def parse(cls, text: str) -> OracleSpec:
        """`oracle[:CELL_M[,K[,PARENT_CELL_M[,PARENTS]]]]`, e.g. `oracle:1,100` (4 m parents, 10 of
        them) or `oracle:1,100,0` (flat labels on every level, as in the oracle study)."""
        text = text.strip()
        if text == "oracle":
            return cls()
        if not text.startswith("oracle:"):
            raise InputError(f"segmenter {text!r}: expected oracle[:CELL_M[,K[,PARENT_CELL_M[,PARENTS]]]]")
        return cls(PlaceCells.parse(text[len("oracle:"):], cls().cells))

    def name(self) -> str:
        return f"oracle:{self.cells.name()}"


def pooled_probs(labels: np.ndarray, K: int, size_wh: tuple[int, int], blur_px: float,
                 uniform: float) -> np.ndarray:
    """(K, h, w) float32: one-hot `labels` (H, W) pooled to size_wh (each pixel counts in the
    level pixel it falls in: area pooling where the sizes divide), blurred and mixed with the
    uniform distribution."""
    H, W = labels.shape
    w, h = size_wh
    rows, cols = np.arange(H) * h // H, np.arange(W) * w // W
    block = rows[:, None] * w + cols[None, :]
    counts = np.bincount((labels * (h * w) + block).ravel(), minlength=K * h * w)
    area = np.bincount(block.ravel(), minlength=h * w).astype(np.float32)
    p = counts.reshape(K, h, w).astype(np.float32) / area.reshape(1, h, w)
    if blur_px > 0:
        p = gaussian_filter(p, sigma=(0, blur_px, blur_px), mode="nearest")
    p *= np.float32(1.0 - uniform)
    p += np.float32(uniform / K)
    return p


def window_histograms(probs: np.ndarray, grid: int = 3) -> np.ndarray:
    """(grid^2 * K,) float32: the mean of `probs` (K, h, w) in the network's GPO windows: GPO
    with flat rank weights."""
    _, h, w = probs.shape
    return np.concatenate([probs[:, y0:y0 + wh, x0:x0 + ww].mean(axis=(1, 2))
                           for y0, x0, wh, ww in gpo_windows(h, w, grid)]).astype(np.float32)


class OracleSegmenter:
    """Ground-truth labels for the frames of a rendered world (see the module docstring)."""

    backend = "oracle"

    def __init__(self, world_path: Path | str, spec: OracleSpec = OracleSpec(),
                 config: ModelConfig = ModelConfig(), strides: tuple[int, ...] | None = None):
        """strides: level strides, coarse to fine (default: the network's 16, 8, 4, 2). Only the
        refiner's resolution study sets them ((8, 4, 2, 1): a finest level at the image size, which
        the network does not produce); the descriptor keeps the network's layout."""
        self.world = load_world(world_path)
        self.spec = spec
        self.K = spec.K
        self.input_size = (self.world.config.width, self.world.config.height)
        self.strides = tuple(strides or config.strides)
        self.gpo_stride = config.strides[-1] * config.gpo_pool
        self.gpo_grid = config.gpo_grid
        key = f"{spec.name()}|{spec.blur_px}|{spec.uniform}|{spec.cells.seed}|{self.world.config.hash()}"
        if self.strides != tuple(config.strides):  # other level sizes, other outputs
            key += f"|{self.strides}"
        self.model_hash = "oracle-" + hashlib.sha256(key.encode()).hexdigest()[:9]
        self._by_stamp: dict[int, FrameRecord] = {}
        self._by_path: dict[Path, FrameRecord] = {}
        self._by_name: dict[str, FrameRecord] = {}
        for cond in self.world.conditions:
            for rec in self.world.frames(cond):
                self._by_stamp[rec.stamp_ns] = rec
                self._by_path[rec.rgb_path.resolve()] = rec
                self._by_name[f"{cond}/{rec.index:06d}"] = rec

    def level_size(self, level: int) -> tuple[int, int]:
        s = self.strides[level]
        return self.input_size[0] // s, self.input_size[1] // s

    def level_K(self, level: int) -> int:
        """Channels of `level`: the parents on the `coarse_levels` coarsest levels, else K."""
        coarse = self.spec.hierarchical and level < self.spec.coarse_levels
        return self.spec.cells.parents if coarse else self.spec.K

    def level_camera(self, camera: Camera, level: int) -> Camera:
        return camera.scaled_to(*self.level_size(level))

    def record(self, frame) -> FrameRecord:
        """The world frame behind a reference (see the module docstring), or an InputError."""
        if isinstance(frame, FrameRecord):
            return frame
        rec = None
        if isinstance(frame, (int, np.integer)):
            rec = self._by_stamp.get(int(frame))
        elif isinstance(frame, (str, Path)):
            rec = self._by_name.get(str(frame)) or self._by_path.get(Path(frame).resolve())
        if rec is None:
            raise InputError(f"oracle segmenter: {frame!r} is not a frame of the world {self.world.root} "
                             "(it needs ground truth: a world image path, condition/index name or stamp)")
        return rec

    def segment(self, rgb: np.ndarray | None = None, frame=None) -> SegmentationResult:
        """Ground-truth segmentation of `frame` (`rgb` is not looked at; it may be None)."""
        if frame is None:
            raise InputError("the oracle segmenter needs to know which world frame it sees")
        rec = self.record(frame)
        ids, depth = self.world.ids(rec), self.world.depth(rec)
        if depth.shape != (self.input_size[1], self.input_size[0]):
            raise InputError(f"oracle: {rec.depth_path} is {depth.shape[::-1]}, the world says {self.input_size}")
        points = world_points(ids, depth, rec.camera, rec.T_world_cam)
        labels = self.spec.cells.labels(*points).reshape(depth.shape)
        levels = []
        for lv in range(len(self.strides)):
            K_l = self.level_K(lv)
            lab = level_labels(labels, self.spec.K, K_l)
            probs = pooled_probs(lab, K_l, self.level_size(lv), self.spec.blur_px, self.spec.uniform)
            levels.append(LevelMaps(probs, level_reductions(probs)))
        # the descriptor reads flat cell labels: with the hierarchy's 10 children per parent,
        # neighbouring cells share labels 10x more often, and retrieval lost 8 points at 5 m
        flat = labels if not self.spec.hierarchical else dataclasses.replace(
            self.spec.cells, parent_cell_m=0.0).labels(*points).reshape(depth.shape)
        w, h = self.input_size
        gpo = pooled_probs(flat, self.K, (w // self.gpo_stride, h // self.gpo_stride), 0.0, 0.0)
        return SegmentationResult(levels, window_histograms(gpo, self.gpo_grid), self.input_size,
                                  self.model_hash, self.K)
