"""`segloc bench pipeline`: the three nodes as separate processes on a world bag, per resolution.

For each image size a world traversal of the default world's layout (same seed, so the default
map applies) is rendered at that size and input rate and written as a bag; the graph replays it
(`bag_eval.replay`). Reported per size: image->pose latency p50/p95 (ms, wall time between the
image and the pose published for it, both seen by the same recorder through DDS; a frame whose
fix was rejected has no pose), the same for the refiner's status, which comes for every processed
frame, accepted or not (the stricter figure: it includes failed relocalizations), output rate
against input rate (Hz), frames dropped (images with no status), share localized, node RSS.
The figure to compare across runs is `rate_ratio` (output/input), as absolute latency on this
shared 2-core machine moves with its load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segloc_core import paths
from segloc_core.cli import positive_float, positive_int

SIZES = ((320, 240), (640, 480))
STATE_LOCALIZED = 1  # segloc_msgs/LocalizationStatus.STATE_LOCALIZED (no ROS import at module load)


def bench_world(width: int, height: int, rate_hz: float, frames: int):
    """The benchmarks' traversals (summer, overcast) of the default world's layout, rendered once
    per size: (dataset, config)."""
    from segloc_core.world import WorldConfig, load_world, render_world

    config = WorldConfig(width=width, height=height, frame_rate_hz=rate_hz, max_frames=frames,
                         conditions=("summer", "overcast"), mapping_condition="summer")
    world = render_world(config, paths.home() / "world" / f"bench_{width}x{height}",
                         progress=False)
    return load_world(world), config


def _bench_bag(width: int, height: int, rate_hz: float, frames: int) -> Path:
    from segloc_core.world import write_world_bag

    world, config = bench_world(width, height, rate_hz, frames)
    bag = paths.home() / "bags" / f"bench_{width}x{height}_{config.hash()}"
    if not bag.is_dir():
        write_world_bag(world, "overcast", bag, overwrite=True)
    return bag


def bench_pipeline(sizes=SIZES, rate_hz: float = 10.0, frames: int = 300,
                   map_path: Path | None = None, model: Path | None = None) -> dict:
    from segloc_ros.tools.bag_eval import replay
    from segloc_ros.tools.demo import default_map

    # the default map, rebuilt when the model changed (its frames must come from the same model)
    map_path = map_path or default_map(model)
    out = {"input_rate_hz": rate_hz, "frames": frames, "map": str(map_path)}
    for width, height in sizes:
        bag = _bench_bag(width, height, rate_hz, frames)
        rec = replay(bag, map_path, model, rate=1.0,
                     log_path=paths.home() / "bench" / f"pipeline_{width}x{height}.log")
        images = sorted(rec.image_wall_ns)
        done = [s for s in images if s in rec.status_wall_ns]
        latency = np.array([(rec.status_wall_ns[s] - rec.image_wall_ns[s]) * 1e-6 for s in done])
        posed = [s for s in images if s in rec.pose_wall_ns]
        pose_latency = np.array([(rec.pose_wall_ns[s] - rec.image_wall_ns[s]) * 1e-6 for s in posed])
        # a fix from a global prior (relocalization: several starts refined) vs one while tracking
        relocalized = np.array([rec.status.get(s, (0, ""))[0] == STATE_LOCALIZED for s in posed],
                               bool)
        span_s = (rec.status_wall_ns[done[-1]] - rec.status_wall_ns[done[0]]) * 1e-9 \
            if len(done) > 1 else float("nan")
        in_span_s = (rec.image_wall_ns[images[-1]] - rec.image_wall_ns[images[0]]) * 1e-9
        out_rate = (len(done) - 1) / span_s if len(done) > 1 else 0.0
        in_rate = (len(images) - 1) / in_span_s if len(images) > 1 else 0.0
        key = f"{width}x{height}"
        out[key] = {
            "pose_latency_p50_ms": _percentile(pose_latency, 50),
            "pose_latency_p95_ms": _percentile(pose_latency, 95),
            "tracking_pose_latency_p95_ms": _percentile(pose_latency[~relocalized], 95),
            "relocalized_pose_latency_p50_ms": _percentile(pose_latency[relocalized], 50),
            "relocalizations": int(relocalized.sum()),
            "latency_p50_ms": _percentile(latency, 50),
            "latency_p95_ms": _percentile(latency, 95),
            "input_rate_hz": in_rate, "output_rate_hz": out_rate,
            "rate_ratio": out_rate / in_rate if in_rate else None,
            "images": len(images), "processed": len(done), "dropped": len(images) - len(done),
            "localized": len(rec.pose), "node_rss_kb_end": rec.rss_end_kb,
            # each node's own work per frame (its /diagnostics), to see where latency goes
            "node_ms_p50": {name.split(": ")[-1]: float(d.get("latency_p50_ms", "nan"))
                            for name, d in rec.diagnostics.items()},
        }
    return out


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _run(args: argparse.Namespace) -> int:
    sizes = tuple(tuple(int(v) for v in s.split("x")) for s in args.sizes)
    result = bench_pipeline(sizes, args.rate, args.frames, args.map, args.model)
    for key in (f"{w}x{h}" for w, h in sizes):
        r = result[key]
        print(f"{key}: image->pose p50 {r['pose_latency_p50_ms'] or float('nan'):.0f} ms, "
              f"p95 {r['pose_latency_p95_ms'] or float('nan'):.0f} ms; image->status (every "
              f"processed frame) p50 {r['latency_p50_ms']:.0f} ms, p95 {r['latency_p95_ms']:.0f} ms, "
              f"{r['relocalizations']} relocalizations (pose p50 "
              f"{r['relocalized_pose_latency_p50_ms'] or float('nan'):.0f} ms), "
              f"output {r['output_rate_hz']:.1f} Hz for {r['input_rate_hz']:.1f} Hz in, "
              f"{r['dropped']} of {r['images']} dropped, {r['localized']} localized")
    print(json.dumps(result))
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=[f"{w}x{h}" for w, h in SIZES])
    parser.add_argument("--rate", type=positive_float, default=10.0, help="camera rate of the bag (Hz)")
    parser.add_argument("--frames", type=positive_int, default=300,
                        help="frames per bag (300: a 30 s drive, start-up included)")
    parser.add_argument("--map", type=Path, default=None, help="map (default: the default world's)")
    parser.add_argument("--model", type=Path, default=None, help="model (default: shipped)")
    parser.set_defaults(func=_run)
