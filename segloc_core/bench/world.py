"""`segloc bench world`: the rendered world's frame rate at 320x240 and 640x480 (JSON last line)."""

from __future__ import annotations

import argparse
import json
import time

from segloc_core.cli import positive_int
from segloc_core.world import CONDITIONS, DEFAULT_CONDITIONS, WorldConfig


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
    parser.add_argument("--frames", type=positive_int, default=60, help="frames per resolution (spread over the loop)")
    parser.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        res = bench_world(args.frames, args.seed)
        print(json.dumps(res))
        return 0

    parser.set_defaults(func=run)
