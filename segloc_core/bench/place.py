"""`segloc bench place`: your own place, leave-one-out, through the user's own commands.

For a folder of photos of one place without poses (e.g. `../shared/data/sacre_coeur/mapping`):
reference poses from structure from motion over all of them; then for each photo in turn, the map
of the others is built exactly as `segloc map build --source images DIR [--train-model]` builds it
(its own SfM, optionally a model trained for the place), and the photo is localized as
`segloc localize` does (retrieval prior, refinement, gates) with its reference intrinsics. The map's
frame is aligned to the reference by a similarity fitted to the database camera centres, and
errors are relative to the reference's median scene depth (SfM has no scale).

Reported per configuration: PA (the retrieval prior) and PR (accepted refined fixes) within 5 % of
the scene depth and 5 deg (and at 1 % / 2 deg, 25 % / 10 deg), accepted fixes and how many of them
are off by more than 10 % of the depth, and where refinement lands when it starts at the photo's
reference pose (`from_reference`, gates ignored): what the labels allow whatever the prior. Last
stdout line: JSON; a PNG of the per-photo errors.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Pose, pose_error

THRESHOLDS = ((0.01, 2.0), (0.05, 5.0), (0.25, 10.0))  # (share of scene depth, deg)
WRONG = 0.10  # an accepted fix farther than this share of the scene depth is wrong


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) with dst ~ s R src + t (least squares over matched points, Umeyama)."""
    from scipy.spatial.transform import Rotation

    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    rot, _ = Rotation.align_vectors(b, a)
    R = rot.as_matrix()
    s = float(np.sum(b * (a @ R.T)) / max(np.sum(a * a), 1e-12))
    return s, R, md - s * R @ ms


def to_reference(T_cam_map: Pose, s: float, R: np.ndarray, t: np.ndarray) -> Pose:
    """A camera pose in the map's frame -> in the reference frame (x_ref = s R x_map + t)."""
    R_cam_ref = T_cam_map.R @ R.T
    centre = s * R @ T_cam_map.center() + t
    return Pose(R_cam_ref, -R_cam_ref @ centre)


def to_map(T_cam_ref: Pose, s: float, R: np.ndarray, t: np.ndarray) -> Pose:
    """The inverse of `to_reference`: a camera pose in the reference frame -> in the map's frame."""
    R_cam_map = T_cam_ref.R @ R
    centre = R.T @ (T_cam_ref.center() - t) / s
    return Pose(R_cam_map, -R_cam_map @ centre)


def _errors(T_est: Pose | None, T_gt: Pose, depth: float) -> tuple[float, float]:
    if T_est is None:
        return float("inf"), float("inf")
    dt, dr = pose_error(T_est, T_gt)
    return dt / depth, dr


def _fix_errors(result, sim: tuple, gt: Pose, depth: float, from_reference: bool = False) -> list[float]:
    """A `QueryResult`'s fix (or its fix from the reference pose) in the reference frame, as errors
    (share of the depth, deg); a start from the reference that found no map points to refine is a
    miss (inf), not a perfect fix."""
    fix = result.fix_from_reference if from_reference else result.fix
    if fix is None or (from_reference and not fix.num_points):
        return [float("inf"), float("inf")]
    return [round(v, 4) for v in _errors(to_reference(fix.T_cam_world, *sim), gt, depth)]


def leave_one_out(images: Path, work: Path, train_config: str | None, queries: list[str] | None = None,
                  progress: bool = True) -> dict:
    """Per photo: errors of the prior and of the fix (relative to the scene depth, deg), accepted."""
    from segloc_core.localize.localizer import LocalizerConfig, localize_queries
    from segloc_core.maps.build import scene_depth
    from segloc_core.maps.cli import MapSource, build_map
    from segloc_core.maps.colmap import sfm_geometry
    from segloc_core.maps.format import load_map
    from segloc_core.maps.query_sets import QueryImage
    from segloc_core.net.segmenters import open_segmenter

    ref = sfm_geometry(images)
    depth = scene_depth(ref)
    names = list(queries or ref.names)
    rows = []
    for name in names:
        if name not in ref.names:
            raise InputError(f"{name}: not registered by the reference SfM of {images}")
        q = ref.names.index(name)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            db = Path(tmp) / "images"
            db.mkdir()
            for other in sorted(images.iterdir()):
                if other.name != name and other.is_file():
                    (db / other.name).symlink_to(other.resolve())
            out = work / f"loo_{Path(name).stem}.segmap"
            build_map(MapSource("images", db), out, progress=progress, train_config=train_config)
            seg = open_segmenter(map_path=out if train_config else None)
            m = load_map(out)  # the file, as `segloc localize --map` reads it
            shared = [i for i, n in enumerate(m.images.names) if n in ref.names]
            src = np.stack([m.images.T_cam_world(i).center() for i in shared])
            dst = np.stack([ref.T_cam_world[ref.names.index(m.images.names[i])].center() for i in shared])
            s, R, t = similarity(src, dst)
            gt = ref.T_cam_world[q]
            query = QueryImage(name, images / name, ref.cameras[q], to_map(gt, s, R, t))
            res = localize_queries([query], seg, m, progress=False, from_reference=True)[0]
            # the same map without its refiner bias correction (`localize.bias`): what the correction did
            raw = localize_queries([query], seg, m, config=LocalizerConfig(correct_refiner_bias=False),
                                   progress=False, from_reference=True)[0]
        align = float(np.median(np.linalg.norm(s * src @ R.T + t - dst, axis=1)) / depth)
        prior = _errors(to_reference(res.T_cam_world_prior, s, R, t) if res.T_cam_world_prior else None, gt, depth)
        sim = (s, R, t)
        rows.append({"image": name, "prior": [round(v, 4) for v in prior],
                     "fix": _fix_errors(res, sim, gt, depth),
                     "from_reference": _fix_errors(res, sim, gt, depth, from_reference=True),
                     "accepted": bool(res.fix is not None and res.fix.accepted),
                     "fix_uncorrected": _fix_errors(raw, sim, gt, depth),
                     "from_reference_uncorrected": _fix_errors(raw, sim, gt, depth, from_reference=True),
                     "accepted_uncorrected": bool(raw.fix is not None and raw.fix.accepted),
                     "bias_corrected": bool(m.meta.refiner_bias),
                     "reason": res.fix.reason if res.fix else res.error, "database_images": len(m.images),
                     "alignment_residual": round(align, 4), "seconds": round(time.perf_counter() - t0, 1)})
        if progress:
            print(json.dumps(rows[-1]), flush=True)
    return {"images": str(images), "scene_depth_units": round(depth, 3), "rows": rows}


def summarize(rows: list[dict]) -> dict:
    def share(key: str, accepted: str | None) -> list[int]:
        return [sum(1 for r in rows if r[key][0] <= d and r[key][1] <= a and (accepted is None or r[accepted]))
                for d, a in THRESHOLDS]

    return {"queries": len(rows), "PA": share("prior", None), "PR": share("fix", "accepted"),
            "from_reference": share("from_reference", None),
            "accepted": sum(r["accepted"] for r in rows),
            "accepted_wrong": sum(r["accepted"] and r["fix"][0] > WRONG for r in rows),
            "bias_corrected": sum(r["bias_corrected"] for r in rows),
            "PR_uncorrected": share("fix_uncorrected", "accepted_uncorrected"),
            "from_reference_uncorrected": share("from_reference_uncorrected", None),
            "accepted_wrong_uncorrected": sum(r["accepted_uncorrected"] and r["fix_uncorrected"][0] > WRONG
                                              for r in rows)}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.27, [min(r["prior"][0], 2.0) for r in rows], 0.27, label="retrieval prior")
    ax.bar(x, [min(r["fix"][0], 2.0) for r in rows], 0.27,
           color=["tab:green" if r["accepted"] else "tab:gray" for r in rows], label="refined (green: accepted)")
    ax.bar(x + 0.27, [min(r["from_reference"][0], 2.0) for r in rows], 0.27, color="tab:purple",
           label="refined from the reference pose")
    ax.axhline(0.05, color="k", lw=0.8, ls="--", label="5 % of the scene depth")
    ax.set_yscale("log")
    ax.set_xticks(x, [Path(r["image"]).stem[:10] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("position error / scene depth")
    ax.set_title(f"leave-one-out on {Path(result['images']).name}: {result['config']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    from segloc_core.paths import home

    images = Path(args.images)
    if not images.is_dir():
        raise InputError(f"{images}: not an image folder")
    train = None if args.no_train else args.train_config
    work = Path(args.out or home() / "bench" / "place") / ("shipped" if train is None else "trained")
    work.mkdir(parents=True, exist_ok=True)
    result = leave_one_out(images, work, train, args.queries)
    result["config"] = "shipped model" if train is None else f"model trained for the place ({train})"
    result["summary"] = summarize(result["rows"])
    _plot(result, work / "place_loo.png")
    (work / "place_loo.json").write_text(json.dumps(result, indent=1))
    print(f"PNG {work / 'place_loo.png'}")
    print(json.dumps(result))
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    from segloc_core.maps.cli import PLACE_CONFIG

    parser.add_argument("--images", required=True, help="a folder of photos of one place (no poses needed)")
    parser.add_argument("--queries", nargs="+", default=None, help="only these photos (default: every one)")
    parser.add_argument("--train-config", default=PLACE_CONFIG, help="config of the place model's training")
    parser.add_argument("--no-train", action="store_true", help="label the maps with the shipped model instead")
    parser.add_argument("--out", default=None, help="work folder (default: $SEGLOC_HOME/bench/place)")
    parser.set_defaults(func=_run)
