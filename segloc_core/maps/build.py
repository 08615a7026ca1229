"""Building a labeled map: geometry from a source, labels by voting, descriptors from the model.

Every source (the rendered world, a COLMAP model, kapture, images alone; see `map_colmap`) first
yields a `MapGeometry`: 3D points, their observations (which database image sees each point
where) and the database images (pose, camera, RGB loader). `label_and_describe` then runs the
segmentation model once per database image: the finest level's class probabilities at each
observation give that observation's vote, and the image's raw global descriptor is kept. A point
takes the label most of its observations voted for; the winning share is its confidence, and
points below `BuildConfig.min_agreement` are dropped (an unstable label would mislead the refiner
more than a missing point). A model trained on place cells (`ModelConfig.place_cells`, mode
geometry) predicts the labels of known cells: its map points take their cell's label from their
position (confidence 1), exactly what the network was trained to see there. Descriptors are
PCA-whitened on the database (`descriptor.fit_whitening`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.spatial import cKDTree

from segloc_core.descriptor import fit_whitening
from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose
from segloc_core.localize.bias import measure_refiner_bias
from segloc_core.localize.refine import LevelInput
from segloc_core.maps.format import Cameras, DatabaseImages, LabeledMap, MapMetadata, assemble_map, group_keys
from segloc_core.progress import progress_bar

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BuildConfig:
    min_agreement: float = 0.5  # drop points whose winning label got less than this share of votes
    whitening_dim: int = 128  # whitened descriptor dimensions (capped at database images - 1)
    # world source only
    voxel_m: float = 0.10  # surface points closer than this merge into one map point
    pixel_stride: int = 4  # back-project every n-th pixel in both directions
    max_depth_m: float = 60.0  # farther surface samples are too sparse to be useful
    depth_tolerance: float = 0.03  # relative depth disagreement that still counts as visible
    frame_stride: int = 1  # use every n-th mapping frame as a database image
    skip_dynamic: bool = True  # no points on parked cars and bins (world ids say which): they move
    # mapping images (evenly spaced) refined from their own poses to measure the refiner's
    # systematic offset, which the localizer then corrects (`localize.bias`); 0: not measured
    bias_images: int = 100


@dataclass(frozen=True)
class Observations:
    """Point `point_index[j]` is seen by database image `image_index[j]` at pixel `uv[j]`."""

    point_index: np.ndarray  # (M,) int64
    image_index: np.ndarray  # (M,) int64
    uv: np.ndarray  # (M, 2) float64, COLMAP pixel convention of that image's camera


@dataclass(frozen=True)
class MapGeometry:
    """Unlabelled map: what every source produces before segmentation."""

    xyz_m: np.ndarray  # (N, 3) float64 world positions
    observations: Observations
    names: tuple[str, ...]
    T_cam_world: tuple[Pose, ...]
    cameras: tuple[Camera, ...]
    load_rgb: Callable[[int], np.ndarray]  # database image index -> (H, W, 3) uint8
    source: str
    units: str = "m"  # "units": a reconstruction of unknown scale (structure from motion)


class SegmenterLike(Protocol):
    """What the builder needs of `segloc_core.net.infer.Segmenter`."""

    K: int
    model_hash: str

    def segment(self, rgb: np.ndarray, frame: object = None): ...

    def level_camera(self, camera: Camera, level: int) -> Camera: ...


ProbLookup = Callable[[int, np.ndarray], np.ndarray]  # (image index, uv (M,2)) -> probs (M, K)


def vote_labels(observations: Observations, prob_lookup: ProbLookup, n_points: int,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of the per-observation argmax labels: (labels (N,) int64, agreement (N,) float32).

    `prob_lookup` is called once per database image (in image order) with the pixels of that
    image's observations. Points without observations get label -1 and agreement 0.
    """
    obs = observations
    order = np.argsort(obs.image_index, kind="stable")
    sorted_images = obs.image_index[order]
    starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]]) if len(order) else []
    images = sorted_images[starts]
    bounds = np.append(starts, len(order))
    votes = np.empty(len(order), np.int64)
    for j, img in enumerate(progress_bar(images, desc="segment + vote", unit="img", enabled=progress)):
        sel = order[bounds[j]: bounds[j + 1]]
        probs = np.asarray(prob_lookup(int(img), obs.uv[sel]))
        if probs.shape[0] != len(sel):
            raise InputError(f"probability lookup for image {img} returned {probs.shape[0]} rows "
                             f"for {len(sel)} pixels")
        votes[sel] = probs.argmax(1)
    # count (point, label) pairs, keep each point's most frequent label (ties: smallest label)
    n_labels = int(votes.max()) + 1 if len(votes) else 1
    keys, group = group_keys(obs.point_index * n_labels + votes)
    pairs, counts = np.stack([keys // n_labels, keys % n_labels], 1), np.bincount(group)
    best = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # per point: highest count first
    first = np.ones(len(best), bool)
    first[1:] = pairs[best[1:], 0] != pairs[best[:-1], 0]
    winners = best[first]
    total = np.bincount(obs.point_index, minlength=n_points)
    labels = np.full(n_points, -1, np.int64)
    agreement = np.zeros(n_points, np.float32)
    labels[pairs[winners, 0]] = pairs[winners, 1]
    agreement[pairs[winners, 0]] = counts[winners] / total[pairs[winners, 0]]
    return labels, agreement


def sample_nearest(probs: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(K, h, w) map at pixels uv (M, 2) (COLMAP convention, same resolution) -> (M, K)."""
    _, h, w = probs.shape
    u = np.clip(np.floor(uv[:, 0]).astype(np.int64), 0, w - 1)
    v = np.clip(np.floor(uv[:, 1]).astype(np.int64), 0, h - 1)
    return probs[:, v, u].T


class SegmenterLookup:
    """`ProbLookup` that segments a database image when first asked, keeping its raw descriptor."""

    def __init__(self, segmenter: SegmenterLike, geometry: MapGeometry):
        self.segmenter, self.geometry = segmenter, geometry
        self.descriptors: dict[int, np.ndarray] = {}

    def segment(self, image: int):
        result = self.segmenter.segment(self.geometry.load_rgb(image), self.geometry.names[image])
        self.descriptors[image] = np.asarray(result.descriptor, np.float32)
        return result

    def __call__(self, image: int, uv: np.ndarray) -> np.ndarray:
        result = self.segment(image)
        level = len(result.levels) - 1  # finest
        cam = self.geometry.cameras[image]
        level_cam = self.segmenter.level_camera(cam, level)
        uv_level, _ = level_cam.project(cam.unproject(uv))
        return sample_nearest(result.levels[level].probs, uv_level)


def _camera_table(cameras: Sequence[Camera]) -> tuple[Cameras, np.ndarray]:
    """Deduplicate identical intrinsics so a map of one camera stores it once."""
    keys, index = {}, []
    for cam in cameras:
        key = (cam.model, cam.width, cam.height, tuple(np.asarray(cam.params, float).tolist()))
        index.append(keys.setdefault(key, len(keys)))
    unique = [None] * len(keys)
    for key, j in keys.items():
        unique[j] = Camera(key[0], key[1], key[2], np.array(key[3]))
    return Cameras.from_cameras(unique), np.asarray(index, np.uint32)


def label_and_describe(geometry: MapGeometry, segmenter: SegmenterLike,
                       config: BuildConfig = BuildConfig(), progress: bool = True) -> LabeledMap:
    """Segment every database image once: vote point labels (or, for a model trained on place
    cells, label each point by its cell), whiten the image descriptors."""
    lookup = SegmenterLookup(segmenter, geometry)
    cells = getattr(segmenter, "place_cells", None)
    if cells is not None:
        labels, agreement = cells.labels(geometry.xyz_m), np.ones(len(geometry.xyz_m), np.float32)
    else:
        labels, agreement = vote_labels(geometry.observations, lookup, len(geometry.xyz_m), progress)
    for i in progress_bar(range(len(geometry.names)), desc="describe", unit="img", enabled=progress and cells is not None):
        if i not in lookup.descriptors:  # images that observe no point still need a descriptor
            lookup.segment(i)
    raw = np.stack([lookup.descriptors[i] for i in range(len(geometry.names))])
    labeled = finish_map(geometry, labels, agreement, raw, segmenter.K, segmenter.model_hash, config)
    return with_refiner_bias(labeled, geometry, segmenter, config.bias_images, progress)


def with_refiner_bias(labeled: LabeledMap, geometry: MapGeometry, segmenter: SegmenterLike,
                      max_images: int, progress: bool = True) -> LabeledMap:
    """`labeled` with `meta.refiner_bias` and `refiner_spread` measured on up to `max_images` evenly spaced database
    images (`localize.bias`); unchanged when `max_images` is 0 or too few refinements converged."""
    n = len(geometry.names)
    if max_images <= 0:
        return labeled
    picks = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(np.int64))
    # segmented again rather than kept from labelling: 100 images' four levels are ~1 GB at K=100

    def samples():
        for i in progress_bar(picks, desc="refiner bias", unit="img", enabled=progress):
            result = segmenter.segment(geometry.load_rgb(int(i)), geometry.names[i])
            cam = geometry.cameras[i]
            levels = [LevelInput(lv.probs, lv.reductions, segmenter.level_camera(cam, j))
                      for j, lv in enumerate(result.levels)]
            yield levels, geometry.T_cam_world[i]

    estimate = measure_refiner_bias(labeled, samples())
    if estimate is None:
        log.warning("refiner bias not measured: too few of %d mapping images refined from their own "
                    "poses converged", len(picks))
        return labeled
    rho, omega = np.round(estimate.twist[:3], 3), np.round(np.degrees(estimate.twist[3:]), 2)
    log.info("refiner bias from %d mapping images: %s %s (camera x right, y down, z forward), %s deg; "
             "median offset %.3f, %.3f with each image corrected by the others'", estimate.images,
             rho.tolist(), labeled.meta.units, omega.tolist(), estimate.offset_before, estimate.offset_after)
    return dataclasses.replace(labeled, meta=dataclasses.replace(labeled.meta, refiner_bias=estimate.twist,
                                                                 refiner_spread=estimate.spread))


def scene_depth(geometry: MapGeometry, max_observations: int = 200_000) -> float:
    """Median depth of the observed points in the images that see them (map units)."""
    obs = geometry.observations
    pick = np.random.default_rng(0).permutation(len(obs.point_index))[:max_observations]
    R = np.stack([T.R for T in geometry.T_cam_world])
    t = np.stack([T.t for T in geometry.T_cam_world])
    img, pts = obs.image_index[pick], geometry.xyz_m[obs.point_index[pick]]
    z = np.einsum("nj,nj->n", R[img, 2], pts) + t[img, 2]
    return float(np.median(z)) if len(z) else 0.0


def finish_map(geometry: MapGeometry, labels: np.ndarray, agreement: np.ndarray,
               raw_descriptors: np.ndarray, K: int, model_hash: str,
               config: BuildConfig = BuildConfig()) -> LabeledMap:
    """Drop weakly agreed points, whiten descriptors and pack everything into a LabeledMap."""
    if len(geometry.names) < 2:
        raise InputError(f"a map needs at least 2 database images, {geometry.source} has {len(geometry.names)}")
    keep = (labels >= 0) & (agreement >= config.min_agreement)
    obs = geometry.observations
    kept_obs = keep[obs.point_index]
    new_id = np.cumsum(keep) - 1
    whitening = fit_whitening(raw_descriptors, config.whitening_dim)
    cameras, camera_index = _camera_table(geometry.cameras)
    images = DatabaseImages(
        geometry.names, np.stack([p.quat_xyzw() for p in geometry.T_cam_world]),
        np.stack([p.t for p in geometry.T_cam_world]), camera_index,
        whitening.apply(raw_descriptors).astype(np.float16))
    meta = MapMetadata(K=K, model_hash=model_hash, source=geometry.source, min_agreement=config.min_agreement,
                       units=geometry.units, scene_depth=scene_depth(geometry))
    return assemble_map(meta, geometry.xyz_m[keep], labels[keep], agreement[keep],
                        new_id[obs.point_index[kept_obs]], obs.image_index[kept_obs],
                        images, cameras, whitening)


# ---------------------------------------------------------------------------------------------
# world source

def world_geometry(world_path: Path, config: BuildConfig = BuildConfig(), condition: str | None = None,
                   progress: bool = True) -> MapGeometry:
    """Surface points of the world's mapping traversal: depth back-projected (static surfaces
    only, by default), voxel-deduplicated, then re-observed in every database image with a depth
    test (so visibility is exact and occlusion, by cars too, is respected)."""
    from segloc_core.world import load_world
    from segloc_core.world.materials import DYNAMIC_IDS

    ds = load_world(world_path)
    frames = ds.frames(condition or ds.mapping_condition)[:: config.frame_stride]
    if len(frames) < 2:
        raise InputError(f"{world_path}: the mapping traversal has {len(frames)} frames, need >= 2")
    keys_all, pts_all = [], []
    depths = []
    for rec in progress_bar(frames, desc="back-project", unit="img", enabled=progress):
        depth = ds.depth(rec)
        depths.append(depth)
        uv = rec.camera.pixel_centers()[:: config.pixel_stride, :: config.pixel_stride].reshape(-1, 2)
        z = depth[:: config.pixel_stride, :: config.pixel_stride].reshape(-1).astype(np.float64)
        ok = (z > 0) & (z < config.max_depth_m)
        if config.skip_dynamic:
            ok &= ~np.isin(ds.ids(rec)[:: config.pixel_stride, :: config.pixel_stride].reshape(-1), DYNAMIC_IDS)
        p_world = rec.T_cam_world.inv().transform(rec.camera.unproject(uv[ok]) * z[ok, None])
        keys_all.append(np.floor(p_world / config.voxel_m).astype(np.int64))
        pts_all.append(p_world)
    keys, pts = np.concatenate(keys_all), np.concatenate(pts_all)
    keys -= keys.min(0)
    span = keys.max(0) + 1
    _, inverse = group_keys((keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2])
    counts = np.bincount(inverse)
    xyz = np.stack([np.bincount(inverse, pts[:, a]) for a in range(3)], 1) / counts[:, None]
    obs_p, obs_i, obs_uv = [], [], []
    tree = cKDTree(xyz)  # only points within reach of a camera are worth projecting
    for i, (rec, depth) in enumerate(progress_bar(list(zip(frames, depths)), desc="visibility", unit="img",
                                          enabled=progress)):
        near = np.asarray(tree.query_ball_point(rec.T_cam_world.center(), config.max_depth_m * 1.5), np.int64)
        p_cam = rec.T_cam_world.transform(xyz[near])
        ahead = (p_cam[:, 2] > 0.1) & (p_cam[:, 2] < config.max_depth_m)
        near, p_cam = near[ahead], p_cam[ahead]
        uv, valid = rec.camera.project(p_cam)
        near, uv = near[valid], uv[valid]
        h, w = depth.shape
        d = depth[np.clip(uv[:, 1].astype(np.int64), 0, h - 1), np.clip(uv[:, 0].astype(np.int64), 0, w - 1)]
        z = p_cam[valid, 2]
        seen = (d > 0) & (np.abs(d - z) <= config.depth_tolerance * z + config.voxel_m)
        obs_p.append(near[seen])
        obs_i.append(np.full(int(seen.sum()), i))
        obs_uv.append(uv[seen])
    observations = Observations(np.concatenate(obs_p), np.concatenate(obs_i), np.concatenate(obs_uv))
    return MapGeometry(xyz, observations, tuple(f"{rec.condition}/{rec.index:06d}" for rec in frames),
                       tuple(rec.T_cam_world for rec in frames), tuple(rec.camera for rec in frames),
                       lambda i: ds.rgb(frames[i]), f"world:{world_path}")


def build_world_map(world_path: Path, segmenter: SegmenterLike, config: BuildConfig = BuildConfig(),
                    progress: bool = True) -> LabeledMap:
    return label_and_describe(world_geometry(world_path, config, progress=progress), segmenter, config, progress)
