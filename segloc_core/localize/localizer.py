"""Per-frame localization against a labeled map: prior -> label-consistency refinement -> gate,
with the tracking state machine (SegLoc's PR; the retrieval prior alone is PA).

Both the refiner node and the ROS-free `segloc localize` / `segloc eval` drive this one class, so
a bag replay and an image-folder evaluation run the same decisions:
- a prior comes from retrieval (`retrieval.Retriever.prior`), from an operator (/initialpose), or,
  while tracking, from the last accepted pose moved by odometry; for the last two the points to
  align are those seen by the database images nearest the predicted camera (`points_near`);
- while tracking, the propagated prior also enters the refinement as a Gaussian pose prior (MAP:
  labels barely constrain the forward translation along a street, odometry does);
- a refined pose is accepted only if it converged, its label consistency reaches
  `min_consistency`, its chance-corrected consistency (Cohen's kappa: consistency against the
  agreement expected from the label frequencies of the points and of the frame's argmax map
  alone) reaches `min_kappa`, and its position standard deviation stays under
  `max_position_std_m`. The kappa gate matters when a model uses few labels: a wrong pose
  then still agrees often by chance;
- the map's measured refiner bias B (`localize.bias`, `MapMetadata.refiner_bias`: the network's
  labels put the cost minimum a fixed offset from the true pose, 0.36 m behind it on the default
  world) is undone: starts and the tracking prior go in as B^-1 T, fixes come out as B T, their
  covariance widened by the measured spread of the corrected optimum (`refiner_spread`);
- states: uninitialized -> localized (fix from a global prior) -> tracking (fix from a propagated
  prior) -> lost (a rejected fix from a global prior, or more than `max_tracking_misses` rejected
  tracking fixes in a row: until then tracking coasts on odometry); lost and uninitialized need a
  global prior again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Pose, distance_scale, pose_error
from segloc_core.localize.refine import (
    GaussianPrior,
    LabeledPoints,
    LevelInput,
    RefineConfig,
    RefineResult,
    level_labels,
    refine_many,
)
from segloc_core.progress import progress_bar

if TYPE_CHECKING:
    from segloc_core.localize.retrieval import RetrievalConfig
    from segloc_core.maps.format import LabeledMap
    from segloc_core.maps.query_sets import QueryImage


class State(Enum):
    UNINITIALIZED = 0
    LOCALIZED = 1
    TRACKING = 2
    LOST = 3


class PriorSource(Enum):
    RETRIEVAL = "retrieval"
    TRACKING = "tracking"
    INITIALPOSE = "initialpose"


@dataclass(frozen=True)
class LocalizerConfig:
    """Gates and tracking settings (units in names)."""

    # calibrated for the geometry-label model (100 place labels, chance agreement ~0.02) on places
    # held out from the evaluation: chosen on the first half of each autumn and night traversal
    # (the most accepted fixes with >= 95 % of them within 5 m / 10 deg), checked on the second
    # half: 61.6 % accepted, 99.0 % of them right (the earlier 0.1 / 0.15, tuned on a subset of all
    # queries: 43.0 %, 100 %). Here kappa ~ consistency; models with few labels need the kappa gate.
    min_consistency: float = 0.12
    min_kappa: float = 0.1
    max_position_std_m: float = 2.0
    max_points: int = 5000
    tracking: bool = True
    near_images: int = 5            # database images whose points a propagated prior aligns
    near_max_angle_deg: float = 60.0  # ... among those looking within this angle of the prior
    hypotheses: int = 5             # retrieved images whose poses are refined as extra starts
    hypothesis_min_dist_m: float = 1.0
    hypothesis_group_m: float = 5.0  # starts this close share their points (refined in lockstep)
    # tracking: the propagated prior enters refinement as a Gaussian (0 disables), its position
    # std growing with the distance driven since the last fix (odometry drifts 0.5-2.5 %, the last
    # fix itself is off by decimetres); the translation search covers 2 std of it
    tracking_prior_std_m: float = 0.03
    tracking_prior_std_per_m: float = 0.02
    tracking_prior_std_deg: float = 0.3
    # rejected tracking fixes in a row before the track is lost; until then the next prior is still
    # the last accepted pose moved by odometry (coasting), as one bad frame (glare, an occluding
    # truck) should not cost a global relocalization
    max_tracking_misses: int = 5
    # a fix is rejected as ambiguous when a converged candidate farther than `hypothesis_group_m`
    # or `ambiguity_deg` from it reaches this share of its label consistency (0 disables). On the
    # world no right fix has a rival above 0.46 (99th percentile of 212, autumn + night); on real
    # photos with a place model, wrong hypotheses won with nearly the right one's consistency
    ambiguity_ratio: float = 0.8
    ambiguity_deg: float = 20.0
    # with the prior term on, tracking refines from the second-coarsest level on: the prediction
    # is centimetres off, which a 20x15 level cannot resolve (measured offline: -5 ms per frame,
    # fixes within 1 m 6 -> 18 of 80)
    tracking_skip_levels: int = 1
    # apply the map's measured refiner bias and spread (`MapMetadata.refiner_bias`); off: the raw
    # refiner optimum and its Gauss-Newton covariance
    correct_refiner_bias: bool = True
    refine: RefineConfig = field(default_factory=RefineConfig)

    def scaled(self, factor: float) -> LocalizerConfig:
        """Every distance (the `_m` settings here and in `refine`) times `factor`: the settings for
        a map whose unit is 1/factor of the scenes they were tuned on (`geometry.distance_scale`)."""
        return dataclasses.replace(
            self, max_position_std_m=self.max_position_std_m * factor,
            hypothesis_min_dist_m=self.hypothesis_min_dist_m * factor,
            hypothesis_group_m=self.hypothesis_group_m * factor,
            tracking_prior_std_m=self.tracking_prior_std_m * factor,
            refine=dataclasses.replace(self.refine, search_radius_m=self.refine.search_radius_m * factor,
                                       search_step_m=self.refine.search_step_m * factor,
                                       max_translation_m=self.refine.max_translation_m * factor))


@dataclass(frozen=True)
class Fix:
    """Outcome of one frame. `T_cam_world` is the refined pose even when rejected (for logs)."""

    T_cam_world: Pose
    covariance: np.ndarray      # (6,6), RefineResult.covariance plus the map's refiner spread
    consistency: float
    kappa: float                # chance-corrected consistency (see module docstring)
    num_points: int
    accepted: bool
    reason: str                 # why rejected; "" when accepted
    source: PriorSource
    T_cam_world_prior: Pose
    state: State                # state after this frame

    @property
    def position_std_m(self) -> float:
        return _largest_std(self.covariance[:3, :3])

    @property
    def rotation_std_rad(self) -> float:
        return _largest_std(self.covariance[3:, 3:])


def chance_consistency(probs: np.ndarray, labels: np.ndarray) -> float:
    """Label agreement expected by chance: sum_k (share of points labelled k) x (share of pixels
    whose argmax is k), from one level's (K,H,W) maps. One argmax pass over K per frame."""
    K = probs.shape[0]
    f_pixels = np.bincount(probs.argmax(0).ravel(), minlength=K) / probs[0].size
    f_points = np.bincount(np.asarray(labels, np.int64), minlength=K)[:K] / max(len(labels), 1)
    return float(f_pixels @ f_points)


def _kappa(consistency: float, chance: float) -> float:
    return (consistency - chance) / (1.0 - chance) if chance < 1.0 else 0.0


def _largest_std(cov: np.ndarray) -> float:
    """Square root of the largest eigenvalue of a 3x3 covariance block; inf if unknown."""
    if not np.all(np.isfinite(cov)):
        return float("inf")
    return float(np.sqrt(max(float(np.max(np.linalg.eigvalsh(cov))), 0.0)))


class Localizer:
    """Tracking state machine around `refine` for one map (see module docstring)."""

    def __init__(self, labeled_map: LabeledMap, config: LocalizerConfig = LocalizerConfig()):
        """`config` in metres; on a map of unknown scale its distances are scaled (`geometry.distance_scale`)."""
        self.map = labeled_map
        self.config = config.scaled(distance_scale(labeled_map.meta.units, labeled_map.meta.scene_depth))
        self.state = State.UNINITIALIZED
        self.last: Fix | None = None
        self.misses = 0  # rejected tracking fixes since the last accepted one
        bias = labeled_map.meta.refiner_bias if config.correct_refiner_bias else ()
        self._bias = Pose.exp(np.asarray(bias, np.float64)) if len(bias) else Pose.identity()
        spread = labeled_map.meta.refiner_spread if config.correct_refiner_bias else ()
        self._spread = np.asarray(spread, np.float64).reshape(6, 6) if len(spread) else np.zeros((6, 6))
        # decoded once: the map stores quantized positions and quaternions
        self._xyz = labeled_map.xyz
        self._labels = labeled_map.labels.astype(np.int64)
        self._confidence = labeled_map.confidence
        # selection rank of every point: most confident first, ties broken by a fixed random
        # order so a capped selection spreads over the whole view instead of taking the first
        # points in map (voxel) order; ranked once here, as sorting per frame cost ~5 ms
        tiebreak = np.random.default_rng(0).permutation(len(labeled_map))
        order = np.lexsort((tiebreak, -labeled_map.confidence_u8.astype(np.int16)))
        self._rank = np.empty(len(labeled_map), np.int64)
        self._rank[order] = np.arange(len(labeled_map))
        images = labeled_map.images
        self._db_R = np.stack([images.T_cam_world(i).R for i in range(len(images))])
        self._db_centres = -np.einsum("nji,nj->ni", self._db_R, images.t_cam_world_m)

    def needs_global_prior(self) -> bool:
        """True unless tracking can propagate the last fix."""
        return not (self.config.tracking and self.state in (State.LOCALIZED, State.TRACKING))

    def reset(self) -> None:
        """Forget the track (operator request or relocalization service)."""
        if self.state != State.UNINITIALIZED:
            self.state = State.LOST
        self.misses = 0

    def points_near(self, T_cam_world: Pose) -> np.ndarray:
        """Point ids seen by the `near_images` database images nearest the camera, among those whose
        optical axis is within `near_max_angle_deg` of its own."""
        axis = T_cam_world.R[2]
        dist = np.linalg.norm(self._db_centres - T_cam_world.center(), axis=1)
        dist[self._db_R[:, 2] @ axis < np.cos(np.radians(self.config.near_max_angle_deg))] = np.inf
        nearest = np.argsort(dist)[: self.config.near_images]
        nearest = nearest[np.isfinite(dist[nearest])]
        return self.map.points_of_images(nearest)

    def labeled_points(self, point_ids: np.ndarray) -> LabeledPoints:
        """The `max_points` most confident of `point_ids` as refiner input."""
        ids = np.asarray(point_ids, np.int64)
        rank = self._rank[ids]
        if len(ids) > self.config.max_points:
            keep = np.argpartition(rank, self.config.max_points - 1)[: self.config.max_points]
            ids, rank = ids[keep], rank[keep]
        ids = ids[np.argsort(rank)]
        return LabeledPoints(self._xyz[ids], self._labels[ids], self._confidence[ids])

    def localize(self, levels: Sequence[LevelInput], T_cam_world_prior: Pose, source: PriorSource,
                 image_ids: np.ndarray | None = None) -> Fix:
        """Refine from a prior, gate the result and advance the state.

        Every start aligns the points of its own neighbourhood (`points_near`: the database images
        nearest it). For a retrieval prior, the pose of each retrieved image `image_ids` (up to
        `hypotheses`, skipping ones within `hypothesis_min_dist_m` of an earlier start) is refined
        too and the converged result with the best label consistency wins: retrieval's top-1 is
        often a neighbour along the road, while the right place is among its top-k (SegLoc's PR
        refines the top-k the same way). Starts within `hypothesis_group_m` of a group's first
        start share its points and are refined in lockstep. Why per-neighbourhood points: the
        union of the top-k images' points mixed places up to 150 m apart (a wrong hypothesis'
        points), and those pulled correct starts off and diluted their label consistency below
        the gates (oracle labels, good top-1: 9 % of queries lost).
        """
        starts = [T_cam_world_prior]
        if source == PriorSource.RETRIEVAL and image_ids is not None:
            for i in np.asarray(image_ids, np.int64)[: self.config.hypotheses]:
                T = self.map.images.T_cam_world(int(i))
                if min(np.linalg.norm(T.center() - s.center()) for s in starts) \
                        >= self.config.hypothesis_min_dist_m:
                    starts.append(T)
        # the refiner works where its cost is lowest for a true pose T: bias^-1 T (see `refiner_bias`)
        starts = [self._bias.inv() @ T for T in starts]
        prior, refine_config = None, self.config.refine
        if source == PriorSource.TRACKING and self.last is not None \
                and self.config.tracking_prior_std_m > 0:
            driven = float(np.linalg.norm(T_cam_world_prior.center() - self.last.T_cam_world.center()))
            std_m = self.config.tracking_prior_std_m + self.config.tracking_prior_std_per_m * driven
            prior = GaussianPrior.isotropic(starts[0], std_m,
                                            np.radians(self.config.tracking_prior_std_deg))
            refine_config = dataclasses.replace(
                refine_config, search_radius_m=min(refine_config.search_radius_m, 2 * std_m))
            skip = min(self.config.tracking_skip_levels, len(levels) - 1)
            levels = levels[skip:]
        candidates: list[tuple[RefineResult, LabeledPoints]] = []
        for group in self._groups(starts):
            points = self.labeled_points(self.points_near(group[0]))
            if len(points.xyz) == 0:
                continue
            candidates += [(r, points) for r in refine_many(levels, points, group, refine_config, prior)]
        if not candidates:
            return self._finish(None, T_cam_world_prior, source, "no map points near the prior")
        best, points = max(candidates, key=lambda c: (c[0].converged, c[0].consistency))
        Ad = self._bias.adjoint()
        best = dataclasses.replace(best, T_cam_world=self._bias @ best.T_cam_world,
                                   covariance=Ad @ best.covariance @ Ad.T)
        gate_probs = levels[-2 if len(levels) > 1 else -1].probs  # read with its own labels
        chance = chance_consistency(gate_probs, level_labels(points.labels, levels[-1].probs.shape[0],
                                                             gate_probs.shape[0]))
        reason = self._rejection(best, chance) or self._ambiguity(best, [c for c, _ in candidates])
        return self._finish(best, T_cam_world_prior, source, reason, chance)

    def _groups(self, starts: Sequence[Pose]) -> list[list[Pose]]:
        """Starts grouped by place: each joins the first group whose first start is within
        `hypothesis_group_m`."""
        groups: list[list[Pose]] = []
        for T in starts:
            for g in groups:
                if np.linalg.norm(T.center() - g[0].center()) < self.config.hypothesis_group_m:
                    g.append(T)
                    break
            else:
                groups.append([T])
        return groups

    def _ambiguity(self, best: RefineResult, candidates: Sequence[RefineResult]) -> str:
        """Why `best` (corrected) is ambiguous among the (uncorrected) candidates, or ""."""
        if self.config.ambiguity_ratio <= 0 or best.consistency <= 0:
            return ""
        for c in candidates:
            if not c.converged or c.consistency < self.config.ambiguity_ratio * best.consistency:
                continue
            dt, dr = pose_error(self._bias @ c.T_cam_world, best.T_cam_world)
            if dt > self.config.hypothesis_group_m or dr > self.config.ambiguity_deg:
                return (f"ambiguous: a candidate {dt:.3g} {self.map.meta.units} / {dr:.0f} deg away reaches "
                        f"{c.consistency / best.consistency:.0%} of the fix's label consistency "
                        f"(ambiguity_ratio {self.config.ambiguity_ratio:.2f})")
        return ""

    def _rejection(self, result: RefineResult, chance: float) -> str:
        if not result.converged:
            return f"refinement failed: {result.failure}"
        if result.consistency < self.config.min_consistency:
            return (f"label consistency {result.consistency:.2f} < "
                    f"min_consistency {self.config.min_consistency:.2f}")
        kappa = _kappa(result.consistency, chance)
        if kappa < self.config.min_kappa:
            return (f"label consistency {result.consistency:.2f} is barely above chance "
                    f"{chance:.2f} (kappa {kappa:.2f} < min_kappa {self.config.min_kappa:.2f})")
        std = _largest_std(result.covariance[:3, :3])
        if not std <= self.config.max_position_std_m:
            return (f"position std {std:.2f} {self.map.meta.units} > max_position_std_m "
                    f"{self.config.max_position_std_m:.3g}")
        return ""

    def _finish(self, result: RefineResult | None, prior: Pose, source: PriorSource,
                reason: str, chance: float = 1.0) -> Fix:
        accepted = result is not None and reason == ""
        if accepted:
            self.state = State.TRACKING if source == PriorSource.TRACKING else State.LOCALIZED
            self.misses = 0
        elif source == PriorSource.TRACKING and not self.needs_global_prior() \
                and self.misses < self.config.max_tracking_misses:
            self.misses += 1  # coast: the track survives a few bad frames
        elif self.state != State.UNINITIALIZED or source != PriorSource.RETRIEVAL:
            self.state = State.LOST
        # published with the map's refiner spread; the position gate above read the refinement's
        # own covariance (the spread is one figure for the whole map, not a sign of a bad fix)
        fix = Fix(T_cam_world=result.T_cam_world if result is not None else prior,
                  covariance=result.covariance + self._spread if result is not None else np.full((6, 6), np.inf),
                  consistency=result.consistency if result is not None else 0.0,
                  kappa=_kappa(result.consistency, chance) if result is not None else 0.0,
                  num_points=result.num_valid if result is not None else 0,
                  accepted=accepted, reason=reason, source=source, T_cam_world_prior=prior,
                  state=self.state)
        if accepted:
            self.last = fix
        return fix

    def propagate(self, T_camprev_camnew: Pose | None) -> Pose:
        """Prior for the next frame: the last accepted pose moved by the camera's odometry motion
        (identity motion when there is no odometry)."""
        assert self.last is not None, "propagate() needs an accepted fix first"
        motion = T_camprev_camnew or Pose.identity()
        return (self.last.T_cam_world.inv() @ motion).inv()


@dataclass(frozen=True)
class QueryResult:
    """One query image localized without tracking: the retrieval prior (PA) and the fix (PR)."""

    name: str
    T_cam_world_prior: Pose | None
    fix: Fix | None
    segment_ms: float
    retrieve_ms: float
    refine_ms: float
    error: str = ""          # why the image was skipped (unreadable, bad size, ...)
    retrieved: tuple[Pose, ...] = ()  # the top-k database images' poses (a baseline matches against them)
    fix_from_reference: Fix | None = None  # refined from the query's reference pose (`from_reference`)


def localize_queries(queries: Sequence[QueryImage], segmenter, labeled_map: LabeledMap,
                     retrieval: RetrievalConfig | None = None,
                     config: LocalizerConfig = LocalizerConfig(),
                     progress: bool = True, from_reference: bool = False) -> list[QueryResult]:
    """Localize independent query images (no tracking: each starts from retrieval).

    With `from_reference`, a query with a reference pose is also refined from that pose (as an
    operator's /initialpose): where that fix lands tells the labels' own accuracy apart from
    retrieval's (a refinement that drifts away from the truth cannot be saved by a better prior)."""
    from segloc_core.localize.retrieval import RetrievalConfig, Retriever

    if segmenter.K != labeled_map.meta.K or segmenter.model_hash != labeled_map.meta.model_hash:
        raise InputError(f"model {segmenter.model_hash} (K={segmenter.K}) is not the one that "
                         f"labelled the map ({labeled_map.meta.model_hash}, K={labeled_map.meta.K})")
    retriever = Retriever(labeled_map, retrieval or RetrievalConfig())
    localizer = Localizer(labeled_map, dataclasses.replace(config, tracking=False))
    out = []
    for query in progress_bar(queries, desc="localize", unit="img", enabled=progress):
        bgr = cv2.imread(str(query.image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            out.append(QueryResult(query.name, None, None, 0.0, 0.0, 0.0,
                                   f"cannot read image {query.image_path}"))
            continue
        t0 = time.perf_counter()
        try:
            seg = segmenter.segment(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), str(query.image_path))
        except InputError as exc:
            out.append(QueryResult(query.name, None, None, 0.0, 0.0, 0.0, str(exc)))
            continue
        t1 = time.perf_counter()
        prior = retriever.prior(seg.descriptor)
        t2 = time.perf_counter()
        levels = [LevelInput(lv.probs, lv.reductions, segmenter.level_camera(query.camera, i))
                  for i, lv in enumerate(seg.levels)]
        localizer.state = State.UNINITIALIZED  # independent queries
        fix = localizer.localize(levels, prior.T_cam_world, PriorSource.RETRIEVAL,
                                 prior.retrieved.image_ids)
        t3 = time.perf_counter()
        at_reference = None
        if from_reference and query.T_cam_world_gt is not None:
            localizer.state = State.UNINITIALIZED
            at_reference = localizer.localize(levels, query.T_cam_world_gt, PriorSource.INITIALPOSE)
        retrieved = tuple(labeled_map.images.T_cam_world(int(i)) for i in prior.retrieved.image_ids)
        out.append(QueryResult(query.name, prior.T_cam_world, fix, (t1 - t0) * 1e3,
                               (t2 - t1) * 1e3, (t3 - t2) * 1e3, retrieved=retrieved,
                               fix_from_reference=at_reference))
    return out
