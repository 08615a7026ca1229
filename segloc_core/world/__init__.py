"""The embedded default world: a procedural street loop rendered under changing conditions.

Python API (each callable without the CLI):

- `WorldConfig`, `render_world(config, out_dir) -> Path` (cached by config hash),
  `load_world(path) -> WorldDataset` (`.conditions`, `.mapping_condition`, `.frames(cond)`,
  `.rgb/.depth/.ids(rec)`, `.odometry(cond)`, `.T_base_cam`),
- `correspondences(ds, rec_a, rec_b)` (and `correspondences_from_depth` on arrays),
  `nearest_frame(frames, T_world_cam)` (the same place in another traversal),
- `WorldRenderer(config).render(condition, T_cam_world)` for views off the traversals,
- `write_world_bag(ds, condition, out_path)` (rosbag2 MCAP), `write_contact_sheet(ds, png)`,
- `render_tiny_world(out_dir) -> Path` a few frames at 160x120 under three conditions, for tests,
- `materials.CLASS_NAMES` the id -> class table of the id maps.

CLI: `segloc world render|bag|sheet` (`segloc bench world` lives in `segloc_core.bench.world`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segloc_core.world import materials
from segloc_core.world.conditions import CONDITIONS, DEFAULT_CONDITIONS
from segloc_core.world.dataset import (
    FrameRecord,
    Odometry,
    WorldConfig,
    WorldDataset,
    WorldRenderer,
    correspondences,
    correspondences_from_depth,
    load_world,
    render_world,
)
from segloc_core.world.sheet import nearest_frame

__all__ = ["CONDITIONS", "DEFAULT_CONDITIONS", "FrameRecord", "Odometry", "WorldConfig", "WorldDataset", "WorldRenderer",
           "configure_cli", "correspondences", "correspondences_from_depth",
           "load_world", "materials", "nearest_frame", "render_tiny_world", "render_world", "tiny_world_config",
           "write_contact_sheet", "write_world_bag"]


def write_world_bag(ds: WorldDataset, condition: str, out_path: Path | str, **kwargs) -> Path:
    """See `segloc_core.world.bag.write_world_bag` (imported lazily: it needs rosbags)."""
    from segloc_core.world.bag import write_world_bag as write

    return write(ds, condition, out_path, **kwargs)


def write_contact_sheet(ds: WorldDataset, out_path: Path | str) -> Path:
    from segloc_core.world.sheet import write_contact_sheet as write

    return write(ds, Path(out_path))


def tiny_world_config() -> WorldConfig:
    """A small, fast world for tests: 12 frames 4 m apart at 160x120, three conditions."""
    return WorldConfig(seed=3, loop_length_m=220.0, width=160, height=120, frame_rate_hz=2.5,
                       conditions=("summer", "winter", "night"), mapping_condition="summer", max_frames=12)


def render_tiny_world(out_dir: Path | str) -> Path:
    """Render (or reuse) the tiny test world in `out_dir`; a few seconds. Returns the folder."""
    return render_world(tiny_world_config(), Path(out_dir), progress=False)


# --- CLI -------------------------------------------------------------------------------------------

def _config_from_args(args: argparse.Namespace) -> WorldConfig:
    base = WorldConfig()
    return WorldConfig(seed=args.seed, loop_length_m=args.length, width=args.width, height=args.height,
                       hfov_deg=args.hfov, frame_rate_hz=args.frame_rate, speed_mps=args.speed,
                       conditions=tuple(args.conditions), mapping_condition=args.mapping_condition,
                       mount_xyz_m=tuple(args.mount_xyz), mount_pitch_down_deg=args.mount_pitch,
                       max_frames=args.max_frames, odom_rate_hz=base.odom_rate_hz)


def _cmd_render(args: argparse.Namespace) -> int:
    from segloc_core import paths

    out = Path(args.out) if args.out else paths.world_dir(args.name)
    t = time.perf_counter()
    root = render_world(_config_from_args(args), out, force=args.force)
    ds = load_world(root)
    n = sum(len(ds.frames(c)) for c in ds.conditions)
    print(f"world: {root} ({n} frames, {len(ds.conditions)} conditions, {time.perf_counter() - t:.1f} s); "
          f"contact sheet {root / 'sheet.png'}")
    return 0


def _world_path(args: argparse.Namespace) -> Path:
    from segloc_core import paths

    return Path(args.world) if args.world else paths.world_dir("default")


def _cmd_bag(args: argparse.Namespace) -> int:
    ds = load_world(_world_path(args))
    conds = ds.conditions if args.condition == "all" else [args.condition]
    out_root = Path(args.out) if args.out else ds.root / "bags"
    for cond in conds:
        out = write_world_bag(ds, cond, out_root / cond, max_frames=args.max_frames,
                              overwrite=args.overwrite, progress=True)
        print(f"bag: {out}")
    return 0


def _cmd_sheet(args: argparse.Namespace) -> int:
    ds = load_world(_world_path(args))
    print(f"contact sheet: {write_contact_sheet(ds, args.out or ds.root / 'sheet.png')}")
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`segloc world render|bag|sheet`."""
    sub = parser.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    d = WorldConfig()
    r = sub.add_parser("render", help="render the world's traversals into a dataset folder (cached)")
    r.add_argument("--name", default="default", help="world name under $SEGLOC_HOME/world/ (default: default)")
    r.add_argument("--out", help="output folder (overrides --name)")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--length", type=float, default=d.loop_length_m, help="loop length in metres")
    r.add_argument("--width", type=int, default=d.width)
    r.add_argument("--height", type=int, default=d.height)
    r.add_argument("--hfov", type=float, default=d.hfov_deg, help="horizontal field of view, degrees")
    r.add_argument("--frame-rate", type=float, default=d.frame_rate_hz, help="camera rate, Hz")
    r.add_argument("--speed", type=float, default=d.speed_mps, help="mean vehicle speed, m/s")
    r.add_argument("--conditions", nargs="+", default=list(d.conditions), choices=sorted(CONDITIONS))
    r.add_argument("--mapping-condition", default=d.mapping_condition)
    r.add_argument("--mount-xyz", type=float, nargs=3, default=list(d.mount_xyz_m),
                   help="camera position in base_link (x forward, y left, z up), metres")
    r.add_argument("--mount-pitch", type=float, default=d.mount_pitch_down_deg, help="camera tilt down, degrees")
    r.add_argument("--max-frames", type=int, default=None, help="cap frames per traversal")
    r.add_argument("--force", action="store_true", help="re-render even if the cache matches")
    r.set_defaults(func=_cmd_render)
    b = sub.add_parser("bag", help="write traversals of a rendered world as rosbag2 (MCAP)")
    b.add_argument("--world", help="rendered world folder (default: the default world)")
    b.add_argument("--condition", default="all", help="condition to write, or 'all' (default)")
    b.add_argument("--out", help="output folder for the bags (default: <world>/bags/<condition>)")
    b.add_argument("--max-frames", type=int, default=None)
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=_cmd_bag)
    s = sub.add_parser("sheet", help="contact sheet PNG: the same places under every condition")
    s.add_argument("--world", help="rendered world folder (default: the default world)")
    s.add_argument("--out", help="PNG path (default: <world>/sheet.png)")
    s.set_defaults(func=_cmd_sheet)
