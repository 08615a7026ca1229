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

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from segloc_core.errors import CheckFailed, InputError, require
from segloc_core.geometry import Pose
from segloc_core.map_format import LabeledMap, load_map

if TYPE_CHECKING:
    from segloc_core.refine import LabeledPoints

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

    def labeled_points(self) -> "LabeledPoints":
        """The points as the refiner takes them, weighted by label confidence."""
        from segloc_core.refine import LabeledPoints

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

def retrieve_images(labeled_map: LabeledMap, images: list[Path], model_path: Path | None = None,
                    config: RetrievalConfig = RetrievalConfig()) -> list[PosePrior]:
    """Segment each image with the model, retrieve from the map and compute its pose prior."""
    import cv2

    from segloc_core.infer import load_segmenter

    retriever = Retriever(labeled_map, config)
    seg = load_segmenter(model_path)
    if seg.model_hash != labeled_map.meta.model_hash:
        raise InputError(f"the map was built with model {labeled_map.meta.model_hash}, the loaded "
                         f"model is {seg.model_hash}; rebuild the map or pass its model with --model")
    out = []
    for path in images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: not a readable image")
        out.append(retriever.prior(seg.segment(bgr[:, :, ::-1].copy()).descriptor))
    return out


def _cli_retrieve(args: argparse.Namespace) -> int:
    from segloc_core.paths import map_path

    m = load_map(Path(args.map) if args.map else map_path("default"))
    config = RetrievalConfig(top_k=args.top_k, prior_mode=args.prior)
    priors = retrieve_images(m, [Path(p) for p in args.images], Path(args.model) if args.model else None, config)
    for path, prior in zip(args.images, priors):
        print(json.dumps({"image": str(path), "top_k": [m.images.names[i] for i in prior.retrieved.image_ids],
                          "scores": [round(float(s), 4) for s in prior.retrieved.scores],
                          "prior_q_cam_world_xyzw": prior.T_cam_world.quat_xyzw().round(6).tolist(),
                          "prior_t_cam_world_m": prior.T_cam_world.t.round(4).tolist(),
                          "prior_sigma_m": np.sqrt(np.diag(prior.covariance)[:3]).round(3).tolist(),
                          "points": int(len(prior.point_ids))}))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="query image files")
    parser.add_argument("--map", help="labeled map (default: the default world's map)")
    parser.add_argument("--model", help="segmentation model (default: the shipped one)")
    parser.add_argument("--top-k", type=int, default=RetrievalConfig.top_k)
    parser.add_argument("--prior", choices=PRIOR_MODES, default=RetrievalConfig.prior_mode)
    parser.set_defaults(func=_cli_retrieve)


# ---------------------------------------------------------------------------------------------
# benchmark: segloc bench retrieval

def synthetic_descriptors(n: int, dim: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Database descriptors along a trajectory (a random walk on the sphere, so neighbours are
    similar as in a real mapping run) and queries that are noisy copies of random database entries."""
    rng = np.random.default_rng(seed)
    db = np.cumsum(rng.standard_normal((n, dim)).astype(np.float32) * 0.2, axis=0)
    db += rng.standard_normal((1, dim)).astype(np.float32) * 5
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.integers(0, n, n_queries)] + rng.standard_normal((n_queries, dim)).astype(np.float32) * 0.02
    return db, q / np.linalg.norm(q, axis=1, keepdims=True)


@dataclass(frozen=True)
class RetrievalBenchRow:
    images: int
    index: str
    query_ms: float  # mean over single queries (the localization use: one frame at a time)
    build_s: float


def _time_queries(index: DescriptorIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    index.search(queries[:1], k)  # warm-up
    ids = np.empty((len(queries), k), np.int64)
    t0 = time.perf_counter()
    for j, q in enumerate(queries):
        ids[j] = index.search(q[None], k)[1][0]
    return (time.perf_counter() - t0) * 1e3 / len(queries), ids


def run_bench(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), dim: int = 256, n_queries: int = 200,
              config: RetrievalConfig = RetrievalConfig(), threads: int = 1,
              floor_ms: float = 5.0) -> dict:
    """Query time per database size with the index `config` picks, the exact baseline at the
    largest size, and the approximate index's recall@1 against exact search."""
    from tqdm import tqdm

    faiss = require("faiss")
    faiss.omp_set_num_threads(threads)
    rows = []
    for n in tqdm(sizes, desc="retrieval bench", unit="size"):
        db, q = synthetic_descriptors(n, dim, n_queries, seed=n)
        t0 = time.perf_counter()
        index = DescriptorIndex(db, config)
        build_s = time.perf_counter() - t0
        ms, ids = _time_queries(index, q, config.top_k)
        rows.append(RetrievalBenchRow(n, index.kind, ms, build_s))
        print(f"{n:>7d} images  {index.kind:14s} {ms:7.3f} ms/query  (built in {build_s:.1f} s)")
    exact = DescriptorIndex(db, RetrievalConfig(exact_max_images=len(db)))
    exact_ms, exact_ids = _time_queries(exact, q, config.top_k)
    recall1 = float(np.mean(ids[:, 0] == exact_ids[:, 0]))
    print(f"{n:>7d} images  {exact.kind:14s} {exact_ms:7.3f} ms/query  (exact baseline)")
    result = {
        "dim": dim, "queries": n_queries, "threads": threads, "top_k": config.top_k,
        "query_ms": {str(r.images): round(r.query_ms, 4) for r in rows},
        "index": {str(r.images): r.index for r in rows},
        "build_s": {str(r.images): round(r.build_s, 2) for r in rows},
        "exact_query_ms_at_largest": round(exact_ms, 4),
        "speedup_vs_exact_at_largest": round(exact_ms / rows[-1].query_ms, 2),
        "recall_at_1_vs_exact_at_largest": round(recall1, 4),
        "floor_ms": floor_ms, "floor_met": rows[-1].query_ms <= floor_ms,
    }
    return result


def _cli_bench(args: argparse.Namespace) -> int:
    config = RetrievalConfig(exact_max_images=args.exact_max_images, hnsw_ef_search=args.ef_search)
    result = run_bench(tuple(args.sizes), args.dim, args.queries, config, args.threads)
    print(json.dumps(result))
    if not result["floor_met"]:
        raise CheckFailed(f"{args.sizes[-1]} database images took {result['query_ms'][str(args.sizes[-1])]} ms "
                          f"per query, above the {result['floor_ms']} ms floor")
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256, help="descriptor dimensions (whitened)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exact-max-images", type=int, default=RetrievalConfig.exact_max_images)
    parser.add_argument("--ef-search", type=int, default=RetrievalConfig.hnsw_ef_search)
    parser.set_defaults(func=_cli_bench)
