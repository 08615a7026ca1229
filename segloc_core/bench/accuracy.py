"""`segloc bench accuracy`: the oracle ceiling and the model side by side, end to end.

Each configuration (a segmenter: the oracle's ground-truth place labels, the network) builds its
own map of the world's mapping traversal (cached by segmenter, world and map code), then every
query frame (default: all autumn and night frames against the summer map; `--stride` for a quick
look) goes through the product path exactly as `segloc eval --queries` takes it: segment, retrieve
(the map's own faiss index), refine the prior and the top-k hypotheses, gate. Independently of
retrieval, the same segmentation is refined from the true pose (drift) and from starts perturbed
by 1 m / 5 deg and 3 m / 10 deg (camera centre moved exactly d metres in a random horizontal
direction, rotated exactly a degrees about a random axis; an operator prior, as /initialpose):
the refiner's accuracy and basin with these labels.

The classical baseline (`sift`: SIFT + PnP with pycolmap, `segloc_core.eval.sift_baseline`) runs on
the same queries, matched to the database images the model's retrieval returned for each.

Recall counts over all queries (a rejected fix is a miss); thresholds use <=. Whether the published
covariance covers the error: the share of accepted fixes inside their 3-sigma position ellipsoid
(`covariance_3sigma_share`; a calibrated Gaussian gives 97 %). Label-quality
figures (`segloc_core.label_metrics`) are computed on the same map and query segmentations. The
last stdout line is one JSON object keyed by configuration; a PNG of the error curves is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core import label_metrics as lm
from segloc_core.errors import InputError
from segloc_core.geometry import Pose, pose_error
from segloc_core.localize.localizer import Localizer, LocalizerConfig, PriorSource, State
from segloc_core.localize.refine import LevelInput
from segloc_core.progress import progress_bar

THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))
PERTURBATIONS = {"1m5deg": (1.0, 5.0), "3m10deg": (3.0, 10.0)}
RETRIEVAL_OK = (5.0, 20.0)  # top-1 database image within this of the query: the right place


def recall(errors: np.ndarray, accepted: np.ndarray) -> list[float]:
    """Fractions of all queries accepted within each of THRESHOLDS; errors (n, 2) = (m, deg)."""
    if len(errors) == 0:
        return [float("nan")] * len(THRESHOLDS)
    return [round(float(np.mean(accepted & (errors[:, 0] <= t) & (errors[:, 1] <= r))), 4)
            for t, r in THRESHOLDS]


def _fix_figures(errors: np.ndarray, accepted: np.ndarray, conditions: Sequence[str]) -> dict:
    """Recall overall and per condition, accepted share, how many accepted fixes are right and
    their median error, for fixes with errors (n, 2) = (m, deg) and an accepted flag each."""
    cond = np.array(conditions)
    some = accepted.any()
    return {
        "recall": recall(errors, accepted),
        "per_condition": {str(c): recall(errors[cond == c], accepted[cond == c]) for c in sorted(set(conditions))},
        "accepted": round(float(accepted.mean()), 4) if len(accepted) else float("nan"),
        "accepted_correct_5m10deg": round(float(np.mean((errors[accepted, 0] <= 5) & (errors[accepted, 1] <= 10))), 4)
        if some else float("nan"),
        "median_t_m": round(float(np.median(errors[accepted, 0])), 3) if some else float("nan"),
        "median_R_deg": round(float(np.median(errors[accepted, 1])), 3) if some else float("nan"),
    }


def perturb(T_cam_world: Pose, dist_m: float, angle_deg: float, rng: np.random.Generator) -> Pose:
    """The camera centre moved exactly `dist_m` in a random horizontal (world x-y) direction and
    the camera rotated exactly `angle_deg` about a random axis."""
    T_world_cam = T_cam_world.inv()
    heading = rng.uniform(0, 2 * np.pi)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    R = Pose.from_rotvec(axis * np.radians(angle_deg), np.zeros(3)).R @ T_world_cam.R
    t = T_world_cam.t + dist_m * np.array([np.cos(heading), np.sin(heading), 0.0])
    return Pose(R, t).inv()


def map_for(segmenter, world: Path, progress: bool):
    """The world's map labelled by `segmenter` (cached: `maps.cached_world_map`)."""
    from segloc_core.maps.cli import cached_world_map
    from segloc_core.maps.format import load_map
    from segloc_core.paths import home

    out = home() / "maps" / f"bench-{segmenter.model_hash}.segmap"
    return load_map(cached_world_map(world, segmenter, out, progress,
                                     lambda msg: print(f"[bench] {msg}", file=sys.stderr)))


@dataclass
class _Rows:
    pr: list
    pa: list
    accepted: list
    retrieval_ok: list
    from_gt: dict
    drift_cam: list  # centre error from a true start along the true camera's x (right), y (down), z (forward)
    effective: list
    cross: list
    argmax: list
    centres: list
    conditions: list
    retrieved: list  # per query: the top-k database poses retrieval returned
    mahalanobis: list  # per query: position error in units of the published covariance (fix.covariance)


def run_configuration(segmenter, world: Path, conditions: Sequence[str], stride: int = 1,
                      cross_stride: int = 4, seed: int = 0, progress: bool = True) -> dict:
    """Every figure of one configuration (see the module docstring)."""
    from segloc_core.localize.retrieval import Retriever
    from segloc_core.world import correspondences, load_world, nearest_frame

    ds = load_world(world)
    labeled_map = map_for(segmenter, world, progress)
    retriever = Retriever(labeled_map)
    localizer = Localizer(labeled_map, LocalizerConfig(tracking=False))
    db_frames = ds.frames(ds.mapping_condition)
    rng = np.random.default_rng(seed)
    rows = _Rows([], [], [], [], {k: ([], []) for k in PERTURBATIONS}, [], [], [], [], [], [], [], [])
    queries = [rec for cond in conditions for rec in ds.frames(cond)[::stride]]
    t0 = time.perf_counter()
    for qi, rec in enumerate(progress_bar(queries, desc=f"accuracy ({segmenter.backend})", unit="img",
                                  enabled=progress, file=sys.stderr)):
        seg = segmenter.segment(ds.rgb(rec), rec)
        levels = [LevelInput(lv.probs, lv.reductions, segmenter.level_camera(rec.camera, i))
                  for i, lv in enumerate(seg.levels)]
        gt = rec.T_cam_world
        prior = retriever.prior(seg.descriptor)
        localizer.state = State.UNINITIALIZED
        fix = localizer.localize(levels, prior.T_cam_world, PriorSource.RETRIEVAL, prior.retrieved.image_ids)
        rows.pr.append(pose_error(fix.T_cam_world, gt))
        rows.pa.append(pose_error(prior.T_cam_world, gt))
        rows.accepted.append(fix.accepted)
        rows.mahalanobis.append(position_mahalanobis(fix.T_cam_world, fix.covariance, gt))
        top1 = pose_error(labeled_map.images.T_cam_world(int(prior.retrieved.image_ids[0])), gt)
        rows.retrieval_ok.append(top1[0] <= RETRIEVAL_OK[0] and top1[1] <= RETRIEVAL_OK[1])
        localizer.state = State.UNINITIALIZED
        at_gt = localizer.localize(levels, gt, PriorSource.INITIALPOSE)
        rows.drift_cam.append(gt.R @ (at_gt.T_cam_world.center() - gt.center()))
        for key, (d, a) in PERTURBATIONS.items():
            localizer.state = State.UNINITIALIZED
            f = localizer.localize(levels, perturb(gt, d, a, rng), PriorSource.INITIALPOSE)
            rows.from_gt[key][0].append(pose_error(f.T_cam_world, gt))
            rows.from_gt[key][1].append(f.accepted)
        rows.effective.append(lm.effective_labels(localizer.labeled_points(localizer.points_near(gt)).labels))
        finest = seg.levels[-1].probs.argmax(0)
        rows.argmax.append(finest)
        rows.centres.append(gt.center())
        rows.conditions.append(rec.condition)
        rows.retrieved.append(tuple(labeled_map.images.T_cam_world(int(i)) for i in prior.retrieved.image_ids))
        if qi % cross_stride == 0:  # the mapping frame of the same place, other condition
            db = db_frames[nearest_frame(db_frames, rec.T_world_cam)]
            db_argmax = segmenter.segment(ds.rgb(db), db).levels[-1].probs.argmax(0)
            uv_q, uv_db = correspondences(ds, rec, db, stride=4)
            agree, chance, n = lm.cross_condition_consistency(
                finest, db_argmax, uv_q, uv_db, (rec.camera.width, rec.camera.height), 20.0)
            if n:
                rows.cross.append((agree, chance, n))
    elapsed = time.perf_counter() - t0
    return _summary(rows, labeled_map, segmenter, elapsed)


def _summary(rows: _Rows, labeled_map, segmenter, elapsed: float) -> dict:
    pr, pa = np.array(rows.pr).reshape(-1, 2), np.array(rows.pa).reshape(-1, 2)
    acc = np.array(rows.accepted, bool)
    drift_cam = np.reshape(rows.drift_cam, (-1, 3))
    everyone = np.ones(len(pa), bool)
    share = lm.label_share_by_distance(labeled_map.xyz, labeled_map.labels)
    pos, pos_chance, pairs = lm.positional_agreement(rows.argmax, np.array(rows.centres), segmenter.K)
    out = {
        "segmenter": segmenter.spec.name() if segmenter.backend == "oracle" else segmenter.backend,
        "model_hash": segmenter.model_hash,
        "queries": len(pr),
        **_fix_figures(pr, acc, rows.conditions),
        "recall_prior": recall(pa, everyone),
        "recall_raw": recall(pr, everyone),
        "drift_from_gt_m": round(float(np.median(np.linalg.norm(drift_cam, axis=1))), 3),
        # along the road (forward) the labels constrain the pose least: which axis the drift is on
        "drift_from_gt_cam_xyz_m": [round(float(v), 3) for v in np.median(np.abs(drift_cam), 0)],
        "retrieval_recall_at_1": round(float(np.mean(rows.retrieval_ok)), 4),
        **_covariance_figures(np.array(rows.mahalanobis), acc),
        "label_share_by_distance": share,
        "label_share_5_10m": share["5-10m"],
        "label_share_chance": share["chance"],
        "effective_labels_at_pose": round(float(np.median(rows.effective)), 2),
        "cross_condition_consistency_20px": _weighted(rows.cross, 0),
        "cross_condition_chance": _weighted(rows.cross, 1),
        "positional_agreement": round(pos, 4),
        "positional_chance": round(pos_chance, 4),
        "positional_pairs": pairs,
        "seconds": round(elapsed, 1),
    }
    for key, (errs, accepted) in rows.from_gt.items():
        out[f"recall_from_gt_{key}"] = recall(np.array(errs).reshape(-1, 2), np.array(accepted, bool))
    out["_pr_t"] = np.where(acc, pr[:, 0], np.inf)
    out["_retrieved"] = rows.retrieved
    return out


def run_sift(world: Path, conditions: Sequence[str], stride: int, retrieved: list, progress: bool = True) -> dict:
    """The classical baseline (`segloc_core.eval.sift_baseline`) on the same queries, matched to the
    database images another configuration's retrieval returned for each (`retrieved`)."""
    import cv2

    from segloc_core.eval.sift_baseline import PRIVACY, SiftLocalizer, cached_sift_map
    from segloc_core.paths import home
    from segloc_core.world import load_world

    ds = load_world(world)
    sift = SiftLocalizer(cached_sift_map(Path(world) / ds.mapping_condition, home() / "sift"))
    queries = [rec for cond in conditions for rec in ds.frames(cond)[::stride]]
    errors, accepted, t0 = [], [], time.perf_counter()
    for rec, poses in zip(progress_bar(queries, desc="accuracy (SIFT-PnP)", unit="img", enabled=progress,
                                       file=sys.stderr), retrieved):
        fix = sift.localize(cv2.cvtColor(ds.rgb(rec), cv2.COLOR_RGB2GRAY), rec.camera, list(poses))
        accepted.append(fix.T_cam_world is not None)
        errors.append(pose_error(fix.T_cam_world, rec.T_cam_world) if fix.T_cam_world is not None else (np.inf, np.inf))
    err, acc = np.array(errors).reshape(-1, 2), np.array(accepted, bool)
    return {
        "queries": len(err),
        **_fix_figures(err, acc, [rec.condition for rec in queries]),
        "map_bytes": sift.map.nbytes, "map_points": sift.map.points, "privacy": PRIVACY,
        "seconds": round(time.perf_counter() - t0, 1),
        "_pr_t": np.where(acc, err[:, 0], np.inf),
    }


def position_mahalanobis(T_est: Pose, covariance: np.ndarray, T_true: Pose) -> float:
    """Position error of a fix in units of its covariance: sqrt(e^T S^-1 e), e the translation part
    of log(T_true T_est^-1) (the camera-frame left perturbation `RefineResult.covariance` is of),
    S its 3x3 block; inf when the covariance is unknown or singular."""
    S = covariance[:3, :3]
    if not np.all(np.isfinite(S)):
        return float("inf")
    e = (T_true @ T_est.inv()).log()[:3]
    try:
        return float(np.sqrt(max(float(e @ np.linalg.solve(S, e)), 0.0)))
    except np.linalg.LinAlgError:
        return float("inf")


def _covariance_figures(mahalanobis: np.ndarray, accepted: np.ndarray) -> dict:
    """Does the published covariance cover the error? Over accepted fixes: the share inside the
    3-sigma position ellipsoid (a calibrated Gaussian: 97 %) and the median Mahalanobis distance
    (calibrated: 1.5)."""
    m = mahalanobis[accepted]
    if len(m) == 0:
        return {"covariance_3sigma_share": float("nan"), "covariance_median_mahalanobis": float("nan")}
    return {"covariance_3sigma_share": round(float(np.mean(m <= 3.0)), 4),
            "covariance_median_mahalanobis": round(float(np.median(m)), 2)}


def _weighted(rows: list, column: int) -> float:
    """Mean of one column of (agreement, chance, pairs) rows, weighted by pairs."""
    if not rows:
        return float("nan")
    return round(float(np.average([r[column] for r in rows], weights=[r[2] for r in rows])), 4)


def plot(results: dict, path: Path) -> Path:
    """Cumulative share of queries localized within t metres (rejected fixes never count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    thresholds = np.logspace(-2, 1.5, 200)
    for name, res in results.items():
        t = res["_pr_t"]
        ax.plot(thresholds, [np.mean(t <= x) * 100 for x in thresholds],
                label=f"{name} (recall {' / '.join(f'{100 * r:.1f}' for r in res['recall'])} %)")
    ax.set_xscale("log")
    ax.set_xlabel("translation error [m] (rejected fixes never count)")
    ax.set_ylabel("queries localized [%]")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("segloc bench accuracy: PR on the product path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def run(configs: dict[str, str], world: Path | None = None, conditions: Sequence[str] = ("autumn", "night"),
        stride: int = 1, model: Path | None = None, out: Path | None = None, progress: bool = True) -> dict:
    """{config name: figures} for each {name: segmenter spec} (see `segloc_core.net.segmenters`)."""
    from segloc_core.net.segmenters import open_segmenter
    from segloc_core.paths import home, world_dir
    from segloc_core.world import WorldConfig, render_world

    world = world or render_world(WorldConfig(), world_dir("default"), progress=progress)
    results = {}
    for name, spec in configs.items():
        if name == "sift":
            continue
        segmenter = open_segmenter(spec, model, world=world, threads=2)
        results[name] = run_configuration(segmenter, world, conditions, stride, progress=progress)
    if "sift" in configs:
        if not results:
            raise InputError("the sift configuration matches against another configuration's retrieval "
                             "(the model's, else the oracle's): add one to --configs")
        source = "model" if "model" in results else next(iter(results))
        results["sift"] = run_sift(world, conditions, stride, results[source]["_retrieved"], progress)
        results["sift"]["method"] = f"SIFT + PnP (pycolmap), the {source}'s retrieval"
    png = plot(results, (out or home() / "bench") / "accuracy.png")
    for res in results.values():
        res.pop("_pr_t")
        res.pop("_retrieved", None)
    results["plot"] = str(png)
    return results


def _cli(args: argparse.Namespace) -> int:
    configs = {name: spec for name, spec in (("oracle", args.oracle), ("model", "model"), ("sift", "sift"))
               if name in args.configs.split(",")}
    res = run(configs, args.world, tuple(args.conditions), args.stride, args.model, args.out)
    for name, r in res.items():
        if name == "plot":
            continue
        if name == "sift":
            print(f"sift    recall {r['recall']}  per condition {r['per_condition']}  accepted {r['accepted']}  "
                  f"map {r['map_bytes'] / 1e6:.2f} MB ({r['map_points']} points)  [{r['queries']} queries, "
                  f"{r['seconds']} s]")
            continue
        print(f"{name:7s} PR {r['recall']}  PA {r['recall_prior']}  from GT+1m/5deg {r['recall_from_gt_1m5deg']}"
              f"  GT+3m/10deg {r['recall_from_gt_3m10deg']}  drift {r['drift_from_gt_m']} m "
              f"(camera x/y/z {r['drift_from_gt_cam_xyz_m']})  "
              f"retrieval@1 {r['retrieval_recall_at_1']}  share 5-10 m {r['label_share_5_10m']} "
              f"(chance {r['label_share_chance']})  positional {r['positional_agreement']} "
              f"(chance {r['positional_chance']})  [{r['queries']} queries, {r['seconds']} s]")
    print(f"plot: {res['plot']}")
    print(json.dumps(res))
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default="oracle,model,sift",
                        help="comma-separated: oracle, model, sift (the classical baseline on the model's retrieval)")
    parser.add_argument("--oracle", default="oracle:1,100", help="oracle spec (see segloc_core.net.oracle)")
    parser.add_argument("--model", type=Path, default=None, help="model (default: shipped)")
    parser.add_argument("--world", type=Path, default=None, help="rendered world (default: the default world)")
    parser.add_argument("--conditions", nargs="+", default=["autumn", "night"], help="query traversals")
    parser.add_argument("--stride", type=int, default=1, help="every n-th query frame (quick look)")
    parser.add_argument("--out", type=Path, default=None, help="folder for accuracy.png")
    parser.set_defaults(func=_cli)
