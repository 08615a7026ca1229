"""`segloc demo` (what `make demo` runs): the whole product on the embedded default world.

1. render the default world (cached by its config hash),
2. build its labeled map from the mapping traversal with the shipped model (cached by world and
   model hash),
3. write a query bag from another condition (cached),
4. replay it through the real node graph started by the launcher (separate processes, DDS on
   loopback), record poses and priors, and
5. print the PA vs PR table with the map's bytes per point; the report (JSON, markdown, TUM,
   trajectory plot, error curve) goes to $SEGLOC_HOME/demo.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segloc_core import paths
from segloc_core.cli import positive_float, positive_int
from segloc_core.eval.evaluate import Report


def cached_map(world: Path, model: Path | None) -> Path:
    """The default map, rebuilt only when the world, the model or the map-building code changed."""
    from segloc_core.maps.cli import cached_world_map
    from segloc_core.net.infer import load_segmenter

    return cached_world_map(world, load_segmenter(model), paths.map_path("default"),
                            announce=lambda msg: print(f"[demo] {msg}"))


def default_map(model: Path | None = None) -> Path:
    """The default world (rendered once) and its map for `model` (rebuilt when stale)."""
    from segloc_core.world import WorldConfig, render_world

    return cached_map(render_world(WorldConfig(), paths.world_dir("default")), model)


def _cached_bag(world: Path, condition: str, max_frames: int | None) -> Path:
    from segloc_core.world import load_world, write_world_bag

    ds = load_world(world)
    key = f"{json.loads((world / 'world.json').read_text()).get('config_hash')}-{max_frames}"
    bag = paths.home() / "bags" / f"default_{condition}"
    stamp = bag.with_name(bag.name + ".key")
    if bag.is_dir() and stamp.is_file() and stamp.read_text() == key:
        print(f"[demo] bag {bag} is up to date")
        return bag
    print(f"[demo] writing the {condition} traversal as a bag -> {bag}")
    write_world_bag(ds, condition, bag, max_frames=max_frames, overwrite=True, progress=True)
    stamp.write_text(key)
    return bag


def run_demo(condition: str = "autumn", max_frames: int | None = 150, rate: float = 1.0,
             model: Path | None = None, out_dir: Path | None = None) -> Report:
    from segloc_core.maps.format import size_report
    from segloc_core.world import WorldConfig, render_world
    from segloc_ros.tools.bag_eval import evaluate_bags

    start = time.monotonic()
    print("[demo] rendering the default world (cached after the first run)")
    world = render_world(WorldConfig(), paths.world_dir("default"))
    map_file = cached_map(world, model)
    bag = _cached_bag(world, condition, max_frames)
    out = out_dir or paths.home() / "demo"
    print(f"[demo] replaying {bag.name} through the node graph at {rate}x")
    report = evaluate_bags([bag], map_file, model, out, rate=rate)
    size = size_report(map_file)
    print()
    print(report.markdown)
    print()
    print(f"map: {size.points} points, {size.bytes_per_point:.2f} bytes per point "
          f"({size.file_bytes / 1e6:.2f} MB); with SIFT per observation it would take "
          f"{size.sift_ratio:.0f}x more")
    print(f"report and plots: {out} (trajectory_pr.png, error_curve.png, metrics.json)")
    print(f"[demo] done in {time.monotonic() - start:.0f} s")
    return report


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--condition", default="autumn", help="query traversal's condition")
    parser.add_argument("--frames", type=positive_int, default=150, help="frames of the query bag")
    parser.add_argument("--rate", type=positive_float, default=1.0, help="bag playback rate")
    parser.add_argument("--model", type=Path, default=None, help="model (default: shipped)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    run_demo(args.condition, args.frames, args.rate, args.model)
    return 0
