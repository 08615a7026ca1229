"""`segloc eval`: localization accuracy of the retrieval prior (PA) and the refined pose (PR).

Without ROS: `segloc eval --queries DIR [DIR ...] --map MAP` localizes every image of kapture or
COLMAP query folders (the default world's condition folders are kapture) and scores PA and PR
against their reference poses, per folder (condition). `segloc eval seg` scores the network
itself (label consistency, retrieval recall). The ROS front end adds `--bag` (segloc_ros.tools.bag_eval).
All report the same way (`write_report`): JSON, a markdown table, TUM trajectories that evo reads,
a trajectory plot and an error curve (PNG).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.eval import trajectory_metrics as tm
from segloc_core.net import segmenters

PA, PR = "PA (retrieval prior)", "PR (refined)"
SIFT = "SIFT-PnP (classical baseline)"


@dataclass(frozen=True)
class Report:
    metrics: dict[str, tm.LocalizationMetrics]
    markdown: str
    out_dir: Path


def write_report(out_dir: Path, ground_truth: tm.Trajectory, estimates: Mapping[str, tm.Trajectory],
                 conditions: Sequence[str] | None = None,
                 latency_ns: Mapping[str, np.ndarray] | None = None,
                 extra: Mapping[str, object] | None = None, unit: str = "m") -> Report:
    """Score each estimate against `ground_truth` (body poses T_world_body, same stamps) and
    write metrics.json, metrics.md, TUM files, trajectory_<method>.png and error_curve.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, errors = {}, {}
    for name, est in estimates.items():
        metrics[name] = tm.localization_metrics(
            est, ground_truth, conditions=conditions,
            latency_ns=(latency_ns or {}).get(name))
        errors[name] = tm.frame_errors(est, ground_truth)
        slug = name.split(" ")[0].lower()
        tm.write_tum(out_dir / f"{slug}.tum", est)
        tm.plot_trajectory(out_dir / f"trajectory_{slug}.png", ground_truth, est, errors[name],
                           title=f"{name} vs ground truth")
    tm.write_tum(out_dir / "ground_truth.tum", ground_truth)
    tm.plot_error_curve(out_dir / "error_curve.png", errors)
    tm.write_json(out_dir / "metrics.json", metrics, extra)
    table = tm.markdown_table(metrics, unit)
    (out_dir / "metrics.md").write_text(table + "\n")
    return Report(metrics, table, out_dir)


def evaluate_queries(query_dirs: Sequence[Path], map_path: Path, model_path: Path | None,
                     out_dir: Path, backend: str = "auto", progress: bool = True,
                     segmenter: str = "model", world: Path | None = None,
                     sift_database: Path | None = None) -> Report:
    """Localize every query image (no tracking) and report PA and PR per folder (condition).
    `segmenter`: "model" or an oracle spec (`segloc_core.net.segmenters`). With `sift_database`
    (posed mapping images) the classical baseline (`segloc_core.eval.sift_baseline`) localizes the
    same images from the same retrieval, reported beside them with its map's bytes."""
    import cv2

    from segloc_core.localize.localizer import localize_queries
    from segloc_core.maps.format import load_map, size_report
    from segloc_core.maps.query_sets import load_query_set
    from segloc_core.net.segmenters import open_segmenter
    from segloc_core.paths import home
    from segloc_core.progress import progress_bar

    labeled_map = load_map(map_path)
    segmenter = open_segmenter(segmenter, model_path, backend, world, map_path=map_path)
    sift = None
    if sift_database is not None:
        from segloc_core.eval.sift_baseline import SiftLocalizer, cached_sift_map

        sift = SiftLocalizer(cached_sift_map(sift_database, home() / "sift"))
    stamps, gt, pa, pr, labels, skipped, sift_poses = [], [], {}, {}, [], [], {}
    for folder in query_dirs:
        queries = load_query_set(folder)
        if any(q.T_cam_world_gt is None for q in queries):
            raise InputError(f"{folder}: evaluation needs reference poses for every query")
        results = localize_queries(queries, segmenter, labeled_map, progress=progress)
        first = len(stamps)
        for q, result in zip(queries, results):
            stamp = len(stamps) + 1   # queries have no common clock: number them
            stamps.append(stamp)
            gt.append(q.T_cam_world_gt)
            labels.append(Path(folder).name)
            if result.error:
                skipped.append(f"{q.name}: {result.error}")
                continue
            pa[stamp] = result.T_cam_world_prior
            if result.fix.accepted:
                pr[stamp] = result.fix.T_cam_world
        pending = [] if sift is None else [(k, q, r) for k, (q, r) in enumerate(zip(queries, results)) if not r.error]
        for k, q, result in progress_bar(pending, desc="SIFT-PnP", unit="img", enabled=progress and bool(pending)):
            fix = sift.localize(cv2.imread(str(q.image_path), cv2.IMREAD_GRAYSCALE), q.camera, list(result.retrieved))
            if fix.T_cam_world is not None:
                sift_poses[stamps[first + k]] = fix.T_cam_world

    def trajectory(poses: dict[int, object]) -> tm.Trajectory:
        keys = sorted(poses)
        return tm.Trajectory.from_poses(keys, [poses[k] for k in keys], inverse=True)

    report = size_report(map_path)
    estimates = {PA: trajectory(pa), PR: trajectory(pr)}
    extra = {"map": str(map_path), "bytes_per_point": report.bytes_per_point, "queries": len(stamps),
             "skipped": skipped, "poses": "camera (T_world_cam)", "units": labeled_map.meta.units,
             "scene_depth": labeled_map.meta.scene_depth}
    if sift is not None:
        from segloc_core.eval.sift_baseline import PRIVACY

        estimates[SIFT] = trajectory(sift_poses)
        extra["map_bytes"] = {"segloc": report.file_bytes, "segloc_points": report.points, "sift": sift.map.nbytes,
                              "sift_points": sift.map.points, "sift_observations": len(sift.map.point_ids)}
        extra["sift_privacy"] = PRIVACY
    return write_report(out_dir, tm.Trajectory.from_poses(stamps, gt, inverse=True), estimates,
                        conditions=labels, extra=extra, unit=labeled_map.meta.units)


def run_queries(args: argparse.Namespace) -> int:
    """`segloc eval --queries ...` (also the fallback of the ROS front end without --bag)."""
    from segloc_core.paths import home, map_path

    if not args.queries:
        raise InputError("give --queries DIR [DIR ...] (or `segloc eval seg`, or --bag with ROS)")
    out = args.out or home() / "eval" / "queries"
    the_map = args.map or map_path()
    database = args.database or (_mapping_images(the_map) if args.method == "sift" else None)
    report = evaluate_queries(args.queries, the_map, args.model, out, args.backend,
                              segmenter=args.segmenter, world=args.world, sift_database=database)
    print(report.markdown)
    print(f"report: {out}")
    return 0


def _mapping_images(map_path: Path) -> Path:
    """The posed images a map of a rendered world was built from (its mapping traversal's kapture
    folder); other maps need --database."""
    from segloc_core.maps.format import load_map
    from segloc_core.world import load_world

    source = load_map(map_path).meta.source
    if not source.startswith("world:"):
        raise InputError(f"--method sift needs --database (the posed mapping images: kapture or COLMAP) "
                         f"for map {map_path} (built from {source})")
    world = load_world(Path(source[len("world:"):]))
    return world.root / world.mapping_condition


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--map", type=Path, default=None, help="labeled map (default: the default world's)")
    parser.add_argument("--model", type=Path, default=None,
                        help="segmentation model (default: the map's own <map>.onnx if there is one, else the shipped model)")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    segmenters.add_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="report folder")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queries", type=Path, nargs="+", default=None,
                        help="kapture or COLMAP query folders with reference poses")
    parser.add_argument("--method", choices=("segloc", "sift"), default="segloc",
                        help="sift: also the classical baseline (SIFT + PnP, pycolmap) on the same queries "
                             "and retrieval, with its map's bytes (see segloc_core.eval.sift_baseline)")
    parser.add_argument("--database", type=Path, default=None,
                        help="--method sift: the posed mapping images (kapture or COLMAP; default for a "
                             "world map: its mapping traversal)")
    add_common_arguments(parser)
    parser.set_defaults(func=run_queries)
    sub = parser.add_subparsers(dest="what", required=False, metavar="{seg}")
    from segloc_core.eval import seg_metrics

    seg_metrics.configure_cli(sub.add_parser(
        "seg", help="network metrics: label consistency and retrieval recall vs baselines"))
