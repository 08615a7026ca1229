"""Image retrieval over a map's database descriptors, and the pose prior it gives the refiner.

A query's raw global descriptor is whitened with the map's own PCA-whitening parameters (the
database descriptors were whitened with the same ones), L2-normalized, and matched by inner
product (= cosine similarity) with faiss. Small databases use an exact flat index; above
`RetrievalConfig.exact_max_images` an HNSW graph keeps a query well under a few milliseconds
(`segloc bench retrieval` measures both and the approximate index's recall against exact).

The prior is either the top-1 image's pose or a similarity-weighted mean of the top-k poses
(chordal L2 rotation mean via scipy, weighted mean of camera centres), with a covariance from the
spread of the top-k poses around it (plus a floor), and the labeled points those images observe,
highest label confidence first, capped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from segloc_core.errors import InputError, require
from segloc_core.geometry import Pose

if TYPE_CHECKING:
    from segloc_core.localize.refine import LabeledPoints
    from segloc_core.maps.format import LabeledMap

PRIOR_MODES = ("top1", "weighted")


@dataclass(frozen=True)
class RetrievalConfig:
    top_k: int = 5
    exact_max_images: int = 20_000  # above this many database images, use the HNSW index
    hnsw_m: int = 32  # graph degree
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128  # search breadth: 64 gave recall@1 0.935, 128 0.975 at the same ~0.25 ms
    prior_mode: str = "weighted"  # "top1" or "weighted" (see module docstring)
    max_points: int = 20_000  # cap on the labeled points handed to the refiner
    min_sigma_m: float = 0.5  # covariance floor: position standard deviation, metres
    min_sigma_rad: float = 0.05  # covariance floor: rotation standard deviation, radians

    def __post_init__(self) -> None:
        if self.prior_mode not in PRIOR_MODES:
            raise InputError(f"prior_mode must be one of {PRIOR_MODES}, got {self.prior_mode!r}")
        if self.top_k < 1 or self.max_points < 1:
            raise InputError(f"top_k and max_points must be >= 1, got {self.top_k}, {self.max_points}")


@dataclass(frozen=True)
class RetrievalResult:
    """Best database images for one query, best first."""

    image_ids: np.ndarray  # (k,) int64 rows of LabeledMap.images
    scores: np.ndarray  # (k,) float32 cosine similarity of whitened descriptors


@dataclass(frozen=True)
class PosePrior:
    """Initial pose for the refiner and the map points it should align."""

    T_cam_world: Pose
    covariance: np.ndarray  # (6, 6) of xi = [rho (m), omega (rad)], left perturbation exp(xi) @ T
    retrieved: RetrievalResult
    point_ids: np.ndarray  # (N,) int64 rows of the map, highest confidence first
    xyz_m: np.ndarray  # (N, 3) float64 world positions
    labels: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float32 label agreement in [0, 1]

    def labeled_points(self) -> LabeledPoints:
        """The points as the refiner takes them, weighted by label confidence."""
        from segloc_core.localize.refine import LabeledPoints

        return LabeledPoints(self.xyz_m, self.labels, self.confidence)


class DescriptorIndex:
    """faiss inner-product index: exact (IndexFlatIP) or approximate (IndexHNSWFlat)."""

    def __init__(self, descriptors: np.ndarray, config: RetrievalConfig = RetrievalConfig()):
        faiss = require("faiss")
        x = np.ascontiguousarray(descriptors, np.float32)
        if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
            raise InputError(f"database descriptors must be a non-empty finite (I, D) array, got {x.shape}")
        d = x.shape[1]
        if len(x) <= config.exact_max_images:
            self.index = faiss.IndexFlatIP(d)
        else:
            self.index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = config.hnsw_ef_construction
            self.index.hnsw.efSearch = config.hnsw_ef_search
        self.index.add(x)
        self.kind = type(self.index).__name__

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) -> scores (Q, k) float32, ids (Q, k) int64; k is clipped to the database size."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if q.shape[1] != self.index.d:
            raise InputError(f"query descriptor has {q.shape[1]} dimensions, the index {self.index.d}")
        return self.index.search(q, min(k, len(self)))


class Retriever:
    """Retrieval and pose prior for one map."""

    def __init__(self, labeled_map: LabeledMap, config: RetrievalConfig = RetrievalConfig()):
        self.map = labeled_map
        self.config = config
        self.index = DescriptorIndex(labeled_map.images.descriptors.astype(np.float32), config)

    def whiten(self, raw_descriptor: np.ndarray) -> np.ndarray:
        """Raw GPO descriptor (D_raw,) -> whitened, L2-normalized (D,) float32."""
        raw = np.asarray(raw_descriptor, np.float32).reshape(-1)
        if raw.shape != self.map.whitening.mean.shape:
            raise InputError(f"descriptor has {raw.size} dimensions, the map's model "
                             f"{self.map.whitening.mean.size} (model {self.map.meta.model_hash})")
        return self.map.whitening.apply(raw)

    def query(self, raw_descriptor: np.ndarray, k: int | None = None) -> RetrievalResult:
        scores, ids = self.index.search(self.whiten(raw_descriptor), k or self.config.top_k)
        keep = ids[0] >= 0
        return RetrievalResult(ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32))

    def prior(self, raw_descriptor: np.ndarray) -> PosePrior:
        return pose_prior(self.map, self.query(raw_descriptor), self.config)


def mean_pose(poses: list[Pose], weights: np.ndarray) -> Pose:
    """Weighted mean of camera poses T_cam_world: chordal rotation mean, mean camera centre."""
    w = np.asarray(weights, np.float64)
    rot = Rotation.from_matrix(np.stack([p.R for p in poses])).mean(weights=w)
    centre = (w[:, None] * np.stack([p.center() for p in poses])).sum(0) / w.sum()
    R = rot.as_matrix()
    return Pose(R, -R @ centre)


def prior_pose(labeled_map: LabeledMap, retrieved: RetrievalResult,
               config: RetrievalConfig = RetrievalConfig()) -> tuple[Pose, np.ndarray]:
    """(T_cam_world, 6x6 covariance) from the retrieved images' poses (see module docstring)."""
    if len(retrieved.image_ids) == 0:
        raise InputError("no database image retrieved; the map has no images")
    poses = [labeled_map.images.T_cam_world(int(i)) for i in retrieved.image_ids]
    # similarities can be negative; weights are shifted so the worst retrieved image still counts a little
    s = retrieved.scores.astype(np.float64)
    w = s - s.min() + 1e-3
    T = poses[0] if config.prior_mode == "top1" else mean_pose(poses, w)
    xi = np.stack([(p @ T.inv()).log() for p in poses])
    cov = (w[:, None, None] * xi[:, :, None] * xi[:, None, :]).sum(0) / w.sum()
    cov += np.diag([config.min_sigma_m ** 2] * 3 + [config.min_sigma_rad ** 2] * 3)
    return T, cov


def prior_point_ids(labeled_map: LabeledMap, image_ids: np.ndarray, max_points: int) -> np.ndarray:
    """Points seen by any of the images, highest label confidence first (then most observed), capped."""
    ids = labeled_map.points_of_images(image_ids)
    order = np.lexsort((-labeled_map.n_observations[ids].astype(np.int64),
                        -labeled_map.confidence_u8[ids].astype(np.int64)))
    return ids[order[:max_points]]


def pose_prior(labeled_map: LabeledMap, retrieved: RetrievalResult,
               config: RetrievalConfig = RetrievalConfig()) -> PosePrior:
    """Pose, covariance and the labeled points of the retrieved images."""
    T, cov = prior_pose(labeled_map, retrieved, config)
    ids = prior_point_ids(labeled_map, retrieved.image_ids, config.max_points)
    return PosePrior(T, cov, retrieved, ids, labeled_map.xyz_of(ids),
                     labeled_map.labels[ids].astype(np.int64),
                     labeled_map.confidence_u8[ids].astype(np.float32) / 255.0)


# ---------------------------------------------------------------------------------------------
# CLI: segloc retrieve
