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

CLI: `segloc world render|bag|sheet`, `segloc bench world`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from segloc_core.world import materials
from segloc_core.world.conditions import CONDITIONS, DEFAULT_CONDITIONS
from segloc_core.world.dataset import (FrameRecord, Odometry, WorldConfig, WorldDataset, WorldRenderer, correspondences,
                                       correspondences_from_depth, load_world, nearest_frame, render_world)

__all__ = ["CONDITIONS", "DEFAULT_CONDITIONS", "FrameRecord", "Odometry", "WorldConfig", "WorldDataset", "WorldRenderer",
           "configure_bench", "configure_cli", "correspondences", "correspondences_from_depth",
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


def bench_world(frames: int = 60, seed: int = 0) -> dict:
    """Frames per second (render + read-back of RGB, depth and ids) of the default world at
    320x240 and 640x480 over all conditions, and of a sky-only baseline in the same run; also
    the CPU milliseconds per frame summed over llvmpipe's threads (on an idle machine with
    `os.cpu_count()` cores the wall-clock rate approaches cores * 1000 / cpu_ms)."""
    import numpy as np

    from segloc_core.world.render import Renderer
    from segloc_core.world.scene import StaticScene, build_static_scene, dynamic_mesh
    from segloc_core.world.trajectory import make_traversal

    cfg = WorldConfig(seed=seed)
    scene = build_static_scene(cfg.loop_length_m, cfg.seed)
    trav = make_traversal(scene.centerline, seed=seed, index=0, is_mapping=True, speed_mps=cfg.speed_mps,
                          speed_variation=cfg.speed_variation, lateral_offset_std_m=0.0, rate_hz=cfg.odom_rate_hz)
    t = np.linspace(0, trav.t_s[-1], frames, endpoint=False)
    T_cam_world = np.linalg.inv(trav.base_at(t) @ cfg.T_base_cam().matrix())
    empty = StaticScene(np.zeros((0, scene.vertices.shape[1]), np.float32), scene.centerline, (),
                        scene.lamp_spacing_m, scene.extent_m)
    out: dict = {"frames": frames, "triangles": int(len(scene.vertices) // 3)}
    for w, h in ((320, 240), (640, 480)):
        cam = WorldConfig(width=w, height=h).camera()
        for key, sc in ((f"fps_{w}x{h}", scene), (f"baseline_sky_only_fps_{w}x{h}", empty)):
            r = Renderer(sc, w, h)
            r.set_dynamic(dynamic_mesh(scene, scene.dynamic) if sc is scene else sc.vertices)
            # as when rendering traversals: the per-condition shadow map is built once (timed
            # apart), then frames are rendered; frames are spread over the conditions
            conds = list(DEFAULT_CONDITIONS)
            elapsed, cpu, shadow_s = 0.0, 0.0, 0.0
            for k, cond in enumerate(conds):
                idx = range(k * frames // len(conds), (k + 1) * frames // len(conds))
                r.set_condition(CONDITIONS[cond])
                t0 = time.perf_counter()
                r.render(T_cam_world[idx[0]], tuple(cam.params))  # shadow map (+ shader warm-up)
                shadow_s += time.perf_counter() - t0
                start, cpu0 = time.perf_counter(), time.process_time()
                for i in idx:
                    r.render(T_cam_world[i], tuple(cam.params), frame_seed=float(i))
                elapsed += time.perf_counter() - start
                cpu += time.process_time() - cpu0
            if sc is scene:
                out[f"first_frame_after_condition_change_ms_{w}x{h}"] = round(1000 * shadow_s / len(conds), 1)
            out[key] = round(frames / elapsed, 1)
            if sc is scene:  # CPU time over all threads: less sensitive to other processes' load
                out[f"cpu_ms_per_frame_{w}x{h}"] = round(1000 * cpu / frames, 1)
            r.release()
        out[f"ratio_to_baseline_{w}x{h}"] = round(out[f"fps_{w}x{h}"] / out[f"baseline_sky_only_fps_{w}x{h}"], 3)
    out["floor_fps_640x480"] = 20.0
    out["meets_floor"] = out["fps_640x480"] >= 20.0
    return out


def configure_bench(parser: argparse.ArgumentParser) -> None:
    """`segloc bench world`: JSON with fps_320x240 and fps_640x480 on the last line."""
    parser.add_argument("--frames", type=int, default=60, help="frames per resolution (spread over the loop)")
    parser.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        res = bench_world(args.frames, args.seed)
        print(json.dumps(res))
        return 0

    parser.set_defaults(func=run)
