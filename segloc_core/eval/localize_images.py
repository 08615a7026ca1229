"""`segloc localize QUERIES --map MAP`: localize the images of a query set and write their poses.

A query set is a kapture folder or a COLMAP model with its images (`segloc_core.maps.query_sets`):
images with intrinsics; reference poses, if present, are not used here (`segloc eval --queries`
scores them). Each image is localized on its own (segment, retrieve, refine, gate; no tracking).

Written to `--out`:
- `poses.tum`: T_world_cam of every accepted fix, stamped by the query's index (1, 2, ... seconds:
  queries share no clock), readable by evo;
- a kapture folder `kapture/sensors/` (`sensors.txt`, `records_camera.txt`, `trajectories.txt`)
  with the accepted poses (world->camera, kapture's convention) under the query images' names;
- `localize.csv`: every query with its outcome (accepted or the reason it was not), refined and
  prior camera centre, label consistency, kappa and position standard deviation.
The last stdout line is a JSON summary. A map labelled by another model is refused (exit 4).

Here, not in `segloc_core.localize`, because it runs a network, which that part never imports.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from segloc_core.eval import trajectory_metrics as tm
from segloc_core.localize.localizer import QueryResult, localize_queries
from segloc_core.maps.format import load_map
from segloc_core.maps.query_sets import QueryImage, load_query_set
from segloc_core.net import segmenters


def _kapture(folder: Path, queries: list[QueryImage], results: list[QueryResult]) -> Path:
    sensors = folder / "sensors"
    sensors.mkdir(parents=True, exist_ok=True)
    head = "# kapture format: 1.1\n"
    cams: dict[tuple, str] = {}
    for q in queries:
        cams.setdefault((q.camera.model, q.camera.width, q.camera.height, tuple(q.camera.params)), f"cam{len(cams)}")
    rows = [f"{cid}, {cid}, camera, {m}, {w}, {h}, " + ", ".join(f"{x:.10g}" for x in p) + "\n"
            for (m, w, h, p), cid in cams.items()]
    (sensors / "sensors.txt").write_text(head + "# sensor_device_id, name, sensor_type, [sensor_params]+\n"
                                         + "".join(rows))
    records, poses = [head + "# timestamp, device_id, image_path\n"], [head + "# timestamp, device_id, qw, qx, qy, qz, tx, ty, tz\n"]
    for i, (q, r) in enumerate(zip(queries, results), 1):
        c = q.camera
        cid = cams[(c.model, c.width, c.height, tuple(c.params))]
        records.append(f"{i}, {cid}, {q.name}\n")
        if r.fix is not None and r.fix.accepted:
            T = r.fix.T_cam_world
            x, y, z, w = T.quat_xyzw()
            poses.append(f"{i}, {cid}, " + ", ".join(f"{v:.12g}" for v in (w, x, y, z, *T.t)) + "\n")
    (sensors / "records_camera.txt").write_text("".join(records))
    (sensors / "trajectories.txt").write_text("".join(poses))
    return folder


def write_results(out: Path, queries: list[QueryImage], results: list[QueryResult]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    accepted = [(i, r) for i, r in enumerate(results, 1) if r.fix is not None and r.fix.accepted]
    tm.write_tum(out / "poses.tum", tm.Trajectory.from_poses(
        [i * 1_000_000_000 for i, _ in accepted], [r.fix.T_cam_world for _, r in accepted], inverse=True))
    _kapture(out / "kapture", queries, results)
    with open(out / "localize.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "image", "accepted", "reason", "x_m", "y_m", "z_m", "prior_x_m", "prior_y_m",
                    "prior_z_m", "consistency", "kappa", "position_std_m"])
        for i, r in enumerate(results, 1):
            if r.fix is None:
                w.writerow([i, r.name, False, r.error] + [""] * 9)
                continue
            c, p = r.fix.T_cam_world.center(), r.T_cam_world_prior.center()
            w.writerow([i, r.name, r.fix.accepted, r.fix.reason, *np.round(c, 4), *np.round(p, 4),
                        round(r.fix.consistency, 4), round(r.fix.kappa, 4), round(r.fix.position_std_m, 4)])
    return {"queries": len(results), "accepted": len(accepted),
            "skipped": sum(r.fix is None for r in results), "out": str(out)}


def _run(args: argparse.Namespace) -> int:
    from segloc_core.paths import home, map_path

    queries = load_query_set(args.queries, args.images)
    labeled_map = load_map(args.map or map_path())
    segmenter = segmenters.open_segmenter(args.segmenter, args.model, args.backend, args.world,
                                          map_path=args.map or map_path())
    results = localize_queries(queries, segmenter, labeled_map)
    summary = write_results(args.out or home() / "localize", queries, results)
    print(json.dumps(summary))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queries", type=Path, help="query set: a kapture folder or a COLMAP model folder")
    parser.add_argument("--images", type=Path, default=None,
                        help="image folder of a COLMAP query set (default: <model>/../images)")
    parser.add_argument("--map", type=Path, default=None, help="labeled map (default: the default world's)")
    parser.add_argument("--model", type=Path, default=None,
                        help="segmentation model (default: the map's own <map>.onnx if there is one, else the shipped model)")
    parser.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime or torch")
    segmenters.add_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $SEGLOC_HOME/localize)")
    parser.set_defaults(func=_run)

