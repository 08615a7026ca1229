"""`segloc bench encoding`: what the Segmentation message's class-map encodings cost, in bytes,
time and localization accuracy.

segmentation_node publishes the probabilities quantized to uint8, either dense (K x H x W) or as
each pixel's top-n classes (`map_encoding`, `top_n`); the refiner's reductions over K travel in
float32 either way. Here the frames of a world traversal (the pipeline benchmark's world, overcast,
320x240) are segmented once each and relocalized as after a loss (retrieval prior, refinement from
the top-k images' poses) from the network's float maps and from every encoding after a real
pack -> serialize -> unpack round trip. Per encoding: serialized message bytes, pack + unpack ms,
fixes accepted and within (0.5 m, 5 deg) / (5 m, 10 deg) of the ground truth, and the median
difference of the fixes to the float ones: the cost of the encoding itself, as the baseline runs
on the same frames in the same process.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from segloc_core.cli import positive_int
from segloc_core.progress import progress_bar

ENCODINGS = (("float32", 0), ("dense_u8", 0), ("topn_u8", 8), ("topn_u8", 3))


def bench_encoding(frames: int = 80) -> dict:
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Header

    from segloc_core.geometry import pose_error
    from segloc_core.localize.localizer import Localizer, PriorSource, State
    from segloc_core.localize.refine import LevelInput
    from segloc_core.localize.retrieval import Retriever
    from segloc_core.maps.format import load_map
    from segloc_core.net.infer import load_segmenter
    from segloc_msgs.msg import Segmentation
    from segloc_ros.adapters.image_conversion import camera_to_camera_info
    from segloc_ros.adapters.segmentation_msg import pack_segmentation, unpack_levels
    from segloc_ros.tools.bench_pipeline import bench_world
    from segloc_ros.tools.demo import default_map

    labeled_map = load_map(default_map())
    world, _ = bench_world(320, 240, 10.0, frames)
    segmenter = load_segmenter(None, backend="onnxruntime")
    retriever = Retriever(labeled_map)
    localizer = Localizer(labeled_map)
    stats = {f"{name}{f'_top{n}' if n else ''}": {"bytes": [], "ms": [], "fixes": []}
             for name, n in ENCODINGS}
    for rec in progress_bar(world.frames("overcast"), desc="encodings", unit="frame"):
        result = segmenter.segment(world.rgb(rec))
        prior = retriever.prior(result.descriptor)
        for (name, n), key in zip(ENCODINGS, stats):
            start = time.perf_counter()
            if name == "float32":
                levels = [LevelInput(lv.probs, lv.reductions, segmenter.level_camera(rec.camera, i))
                          for i, lv in enumerate(result.levels)]
                size = sum(lv.probs.nbytes + lv.reductions.nbytes for lv in result.levels)
            else:
                msg, _ = pack_segmentation(Header(), camera_to_camera_info(rec.camera), result,
                                           name, n)
                raw = serialize_message(msg)
                levels = unpack_levels(deserialize_message(raw, Segmentation), rec.camera)
                size = len(raw)
            stats[key]["ms"].append((time.perf_counter() - start) * 1e3)
            stats[key]["bytes"].append(size)
            localizer.state = State.UNINITIALIZED  # every frame relocalizes, as after a loss
            fix = localizer.localize(levels, prior.T_cam_world, PriorSource.RETRIEVAL,
                                     prior.retrieved.image_ids)
            stats[key]["fixes"].append((fix, rec.T_cam_world))
    reference = [fix for fix, _ in stats["float32"]["fixes"]]
    out = {"frames": len(reference), "model": segmenter.model_hash, "encodings": {}}
    for key, s in stats.items():
        fixes = s["fixes"]
        errors = [pose_error(fix.T_cam_world, gt) for fix, gt in fixes]
        to_float = np.array([pose_error(fix.T_cam_world, ref.T_cam_world)[0]
                             for (fix, _), ref in zip(fixes, reference)])
        accepted = np.array([fix.accepted for fix, _ in fixes])
        out["encodings"][key] = {
            "bytes_per_frame": int(np.median(s["bytes"])),
            "pack_unpack_ms": float(np.median(s["ms"])),
            "accepted": int(accepted.sum()),
            "within_0.5m_5deg": int(sum(a and t <= 0.5 and r <= 5 for a, (t, r) in zip(accepted, errors))),
            "within_5m_10deg": int(sum(a and t <= 5 and r <= 10 for a, (t, r) in zip(accepted, errors))),
            "median_diff_to_float_m": float(np.median(to_float)),
            "same_decision_as_float": int(sum(a == ref.accepted for a, ref in zip(accepted, reference))),
        }
    return out


def _run(args: argparse.Namespace) -> int:
    result = bench_encoding(args.frames)
    for key, r in result["encodings"].items():
        print(f"{key:12s} {r['bytes_per_frame'] / 1e6:6.2f} MB  {r['pack_unpack_ms']:6.1f} ms  "
              f"accepted {r['accepted']:3d}  within 0.5 m {r['within_0.5m_5deg']:3d}  "
              f"within 5 m {r['within_5m_10deg']:3d}  median diff to float "
              f"{r['median_diff_to_float_m']:.3f} m  same decision {r['same_decision_as_float']}"
              f"/{result['frames']}")
    print(json.dumps(result))
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=positive_int, default=80, help="frames of the overcast traversal")
    parser.set_defaults(func=_run)
