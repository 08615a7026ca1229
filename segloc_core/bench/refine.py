"""`segloc bench refine`: the refiner's speed and accuracy on the product's own inputs.

Inputs are the product's, not a synthetic scene: query frames of the default world's other
conditions (default autumn and night), segmented by the oracle segmenter (`segloc_core.net.oracle`:
ground-truth 1 m place labels, 4 m parents on the two coarse levels, at the network's level sizes
20x15 ... 160x120), and map points from the oracle's own map of the summer traversal (the map
`segloc bench accuracy` builds and caches), chosen as the localizer chooses them: the points of the
database images nearest the camera, the `points` (5000) most confident. Each query is refined from
`starts` random starts within 1.5 m and 8 deg of the truth (uniform magnitudes, random directions)
and as many within 3 m / 16 deg (the basin), and once from the truth itself (drift).

Configurations, refined from the same starts one after the other (so load drift on this shared
machine cancels in their ratios):
- `k100_160x120`: the product (K=100, finest level 160x120);
- `k10_160x120`: K=10 (`oracle:1,10,4,5`, its own map): the K=100/K=10 time ratio;
- `k100_320x240`: the same map and labels with levels 40x30 ... 320x240 (a finest level at the image
  size, which the network does not produce): what centimetre accuracy would cost.
The K-dimensional baseline (`refine_direct`: residuals sampled from the (K,H,W) maps) runs on the
first `baseline_runs` in-range starts of the product configuration, interleaved with `refine`.

Time: median process CPU time per `refine` call (segmentation output -- probabilities plus
reductions -- to the pose, translation search included) in a child process with OMP/OpenBLAS/MKL
threads set to 1 (they cannot be changed once numpy is loaded): one thread's work, the honest
measure on a shared machine; wall-clock medians beside it. Accuracy: shares of starts within
(0.05 m, 0.5 deg), (0.25 m, 2 deg) and (0.5 m, 5 deg); a failed refine (diverged, too few points)
counts as a miss. PNG: success
against the initial error for each configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core.geometry import Pose, pose_error
from segloc_core.localize.refine import LabeledPoints, LevelInput, RefineConfig, refine, refine_direct
from segloc_core.reductions import level_reductions

log = logging.getLogger(__name__)

THRESHOLDS = ((0.05, 0.5), (0.25, 2.0), (0.5, 5.0))  # (m, deg): success at these
START = (1.5, 8.0)  # stated range of the starts (m, deg)
BASIN = (3.0, 16.0)  # the basin's starts go this far
CONFIGS = {  # name: (oracle spec, level strides or None for the network's)
    "k100_160x120": ("oracle:1,100", None),
    "k10_160x120": ("oracle:1,10,4,5", None),
    "k100_320x240": ("oracle:1,100", (8, 4, 2, 1)),
}
PRODUCT = "k100_160x120"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Query:
    """One query frame as each configuration sees it: {config: (levels, map points)}."""

    name: str
    T_cam_world: Pose
    inputs: dict[str, tuple[list[LevelInput], LabeledPoints]]


def random_start(T_gt: Pose, max_m: float, max_deg: float, rng: np.random.Generator) -> Pose:
    """T_gt moved by a uniform-magnitude random translation and rotation (camera frame)."""
    t = rng.normal(size=3)
    w = rng.normal(size=3)
    t *= rng.uniform(0, max_m) / np.linalg.norm(t)
    w *= np.radians(rng.uniform(0, max_deg)) / np.linalg.norm(w)
    return Pose.from_rotvec(w, np.zeros(3)) @ Pose(np.eye(3), t) @ T_gt


def load_queries(world: Path, conditions: Sequence[str], num: int, points: int, rng: np.random.Generator,
                 progress: bool = True) -> list[Query]:
    """`num` query frames (random, without replacement) with every configuration's inputs."""
    from segloc_core.bench.accuracy import map_for
    from segloc_core.localize.localizer import Localizer, LocalizerConfig
    from segloc_core.net.oracle import OracleSegmenter, OracleSpec
    from segloc_core.progress import progress_bar
    from segloc_core.world import load_world

    ds = load_world(world)
    segmenters, localizers = {}, {}
    for name, (spec, strides) in CONFIGS.items():
        segmenters[name] = OracleSegmenter(world, OracleSpec.parse(spec), strides=strides)
        if strides is None:  # the network's levels: this label set's own map
            localizers[spec] = Localizer(map_for(segmenters[name], world, progress),
                                         LocalizerConfig(max_points=points, tracking=False))
    candidates = [rec for cond in conditions for rec in ds.frames(cond)]
    if not candidates:
        raise ValueError(f"the world {world} has no frames of {list(conditions)}")
    picked = sorted(rng.choice(len(candidates), size=min(num, len(candidates)), replace=False))
    queries = []
    for i in progress_bar(picked, desc="refine bench: segment", enabled=progress, file=sys.stderr):
        rec = candidates[i]
        inputs = {}
        for name, (spec, _) in CONFIGS.items():
            seg = segmenters[name]
            res = seg.segment(None, rec)
            levels = [LevelInput(lv.probs, lv.reductions, seg.level_camera(rec.camera, k))
                      for k, lv in enumerate(res.levels)]
            loc = localizers[spec]
            inputs[name] = (levels, loc.labeled_points(loc.points_near(rec.T_cam_world)))
        queries.append(Query(f"{rec.condition}/{rec.index}", rec.T_cam_world, inputs))
    return queries


def _timed(fn, *args) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return (time.process_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3, out


def _success(errors: np.ndarray) -> list[float]:
    """Shares of rows (m, deg, failed) within each of THRESHOLDS; failed rows never count."""
    if len(errors) == 0:
        return [float("nan")] * len(THRESHOLDS)
    ok = errors[:, 2] == 0
    return [round(float(np.mean(ok & (errors[:, 0] <= t) & (errors[:, 1] <= r))), 4) for t, r in THRESHOLDS]


def run_bench(world: Path | None = None, conditions: Sequence[str] = ("autumn", "night"), queries: int = 40,
              starts: int = 5, points: int = 5000, baseline_runs: int = 8, seed: int = 0,
              out_dir: Path | None = None, progress: bool = True) -> dict:
    """All figures of `segloc bench refine` as a dict (see the module docstring)."""
    from segloc_core.paths import home, world_dir
    from segloc_core.progress import progress_bar
    from segloc_core.world import WorldConfig, render_world

    world = Path(world) if world else render_world(WorldConfig(), world_dir("default"), progress=progress)
    rng = np.random.default_rng(seed)
    qs = load_queries(world, conditions, queries, points, rng, progress)

    # rows per config: (init m, init deg, final m, final deg, failed, in range, cpu ms, wall ms, iterations)
    rows: dict[str, list] = {name: [] for name in CONFIGS}
    drift: dict[str, list] = {name: [] for name in CONFIGS}
    base: dict[str, tuple[list[float], list[float]]] = {}
    lm_only = RefineConfig(search_radius_m=0.0)
    for q in progress_bar(qs, desc="refine bench: refine", enabled=progress, file=sys.stderr):
        for k in range(2 * starts):
            in_range = k < starts
            T0 = random_start(q.T_cam_world, *(START if in_range else BASIN), rng)
            init = pose_error(T0, q.T_cam_world)
            for name, (levels, pts) in q.inputs.items():
                cpu, wall, res = _timed(refine, levels, pts, T0)
                rows[name].append((*init, *pose_error(res.T_cam_world, q.T_cam_world), float(res.failure is not None),
                                   float(in_range), cpu, wall, res.iterations))
            if in_range and len(base.get("refine", ((),))[0]) < baseline_runs:
                levels, pts = q.inputs[PRODUCT]
                runs = {"refine": lambda: refine(levels, pts, T0),
                        "direct": lambda: refine_direct(levels, pts, T0),
                        "refine_lm": lambda: refine(levels, pts, T0, lm_only),
                        "direct_lm": lambda: refine_direct(levels, pts, T0, lm_only)}
                for key, fn in runs.items():
                    c, w, _ = _timed(fn)
                    base.setdefault(key, ([], []))[0].append(c)
                    base[key][1].append(w)
        for name, (levels, pts) in q.inputs.items():
            drift[name].append(pose_error(refine(levels, pts, q.T_cam_world).T_cam_world, q.T_cam_world)[0])
    red_ms = [_timed(lambda: [level_reductions(lv.probs) for lv in qs[0].inputs[PRODUCT][0]])[0] for _ in range(3)]

    arrays = {name: np.array(r, dtype=np.float64) for name, r in rows.items()}
    figures = {name: _config_figures(a, drift[name]) for name, a in arrays.items()}
    ms, ms_k10 = figures[PRODUCT]["ms_per_refine"], figures["k10_160x120"]["ms_per_refine"]
    ms_same = float(np.median(base["refine"][0]))
    out_dir = Path(out_dir) if out_dir is not None else home() / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _plot_basin(arrays, out_dir / "refine_basin.png")
    product = figures[PRODUCT]
    return {
        "world": str(world),
        "conditions": list(conditions),
        "queries": len(qs),
        "starts_per_query": starts,
        "points": points,
        "map_points_median": int(np.median([len(q.inputs[PRODUCT][1].labels) for q in qs])),
        "threads": {v: os.environ.get(v) for v in _THREAD_VARS},
        "timer": "median process CPU time per refine call (single-threaded child)",
        "thresholds_m_deg": [list(t) for t in THRESHOLDS],
        "start_range_m_deg": list(START),
        "basin_range_m_deg": list(BASIN),
        "configs": {name: {"segmenter": CONFIGS[name][0], **figures[name]} for name in CONFIGS},
        # the product's headline figures and the floors' ratios
        "ms_per_refine": ms,
        "ms_per_refine_k10": ms_k10,
        "ratio_k100_k10": ms / ms_k10,
        "ratio_320x240_160x120": figures["k100_320x240"]["ms_per_refine"] / ms,
        "success": product["success"],
        "drift_from_gt_m": product["drift_from_gt_m"],
        "baseline": "refine_direct: same search and LM core, K-dim residuals sampled from the (K,H,W) "
                    "maps; timed interleaved with refine on the same starts",
        "baseline_ms": float(np.median(base["direct"][0])),
        "ms_per_refine_same_starts": ms_same,
        "speedup": float(np.median(base["direct"][0])) / ms_same,
        "speedup_without_search": float(np.median(base["direct_lm"][0]) / np.median(base["refine_lm"][0])),
        "ms_reductions_cpu": float(np.median(red_ms)),
        "basin_png": str(png),
        "floors": {"ms_per_refine": 15.0, "ratio_k100_k10": 1.5, "speedup": 10.0},
    }


def _config_figures(a: np.ndarray, drift: list[float]) -> dict:
    """Speed and accuracy of one configuration from its rows (see `run_bench`)."""
    in_range = a[:, 5] > 0
    cpu = a[in_range, 6]
    ok = (a[:, 4] == 0) & (a[:, 2] <= THRESHOLDS[1][0]) & (a[:, 3] <= THRESHOLDS[1][1])
    return {
        "ms_per_refine": float(np.median(cpu)),
        "ms_per_refine_p90": float(np.percentile(cpu, 90)),
        "ms_per_refine_wall": float(np.median(a[in_range, 7])),
        "iterations_median": float(np.median(a[in_range, 8])),
        "ms_per_iteration": float(cpu.sum() / max(a[in_range, 8].sum(), 1)),
        "trials": int(in_range.sum()),
        "success": _success(a[in_range, 2:5]),
        "success_basin": _success(a[~in_range, 2:5]),
        "final_error_median_m": float(np.median(a[in_range & ok, 2])) if (in_range & ok).any() else None,
        "final_error_median_deg": float(np.median(a[in_range & ok, 3])) if (in_range & ok).any() else None,
        "failed": round(float(a[in_range, 4].mean()), 4),
        "drift_from_gt_m": round(float(np.median(drift)), 4),
    }


def _plot_basin(arrays: dict[str, np.ndarray], png: Path) -> Path:
    """Success (0.25 m, 2 deg) against the initial error, normalised max(m / 1.5, deg / 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 2.0, 9)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, a in arrays.items():
        norm = np.maximum(a[:, 0] / START[0], a[:, 1] / START[1])
        ok = (a[:, 4] == 0) & (a[:, 2] <= THRESHOLDS[1][0]) & (a[:, 3] <= THRESHOLDS[1][1])
        centres, rates = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (norm >= lo) & (norm < hi)
            if sel.any():
                centres.append(0.5 * (lo + hi))
                rates.append(float(ok[sel].mean()))
        ax.plot(centres, rates, "o-", label=name)
    ax.axvline(1.0, color="gray", ls="--", label=f"{START[0]} m / {START[1]:g} deg")
    ax.set_xlabel(f"initial error, max(t / {START[0]} m, r / {START[1]:g} deg)")
    ax.set_ylabel(f"refined within {THRESHOLDS[1][0]} m, {THRESHOLDS[1][1]:g} deg")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("refiner basin on oracle labels (default world, other conditions)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def _run(args: argparse.Namespace) -> int:
    if any(os.environ.get(v) != "1" for v in _THREAD_VARS) and not args.in_process:
        env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
        cmd = [sys.executable, "-m", "segloc_core.bench.refine", "--queries", str(args.queries),
               "--starts", str(args.starts), "--seed", str(args.seed), "--conditions", *args.conditions]
        if args.world:
            cmd += ["--world", str(args.world)]
        return subprocess.run(cmd, env=env, check=False).returncode
    result = run_bench(args.world, args.conditions, args.queries, args.starts, seed=args.seed)
    print(json.dumps(result))
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    from segloc_core.cli import positive_int

    parser.add_argument("--queries", type=positive_int, default=40, help="query frames (random)")
    parser.add_argument("--starts", type=positive_int, default=5,
                        help="random starts per query in the stated range (as many again in the basin range)")
    parser.add_argument("--world", type=Path, default=None, help="rendered world (default: the default world)")
    parser.add_argument("--conditions", nargs="+", default=["autumn", "night"], help="query traversals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--in-process", action="store_true",
                        help="do not re-run in a single-threaded child process")
    parser.set_defaults(func=_run)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _parser = argparse.ArgumentParser(prog="segloc bench refine")
    configure_bench(_parser)
    _args = _parser.parse_args()
    _args.in_process = True
    sys.exit(_run(_args))
