"""`segloc bench segment`: ms per frame of every available backend at 320x240 and 640x480."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segloc_core.net.infer import available_backends, load_segmenter, model_files, tensorrt_available


def bench_segment(model_path: Path | None = None, sizes: Sequence[tuple[int, int]] = ((320, 240), (640, 480)),
                  repeats: int = 10, threads: int = 2, out_dir: Path | None = None) -> dict:
    """ms per frame for each available backend at each input size, all in one run.

    For every size the model is re-exported at that input size (the network is fully
    convolutional), so the figures are the network's cost there, not a resize. Ratios are against
    PyTorch at the same size, measured in the same run."""
    import tempfile

    from segloc_core.net.export import export_model

    files = model_files(model_path)
    rng = np.random.default_rng(0)
    result: dict = {"unit": "ms_per_frame", "threads": threads, "sizes": {}}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for w, h in sizes:
            onnx_path = export_model(files.weights, files.config_yaml, Path(tmp) / f"bench_{w}x{h}.onnx",
                                     input_size=(w, h), check=False)
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            row = {}
            for backend in available_backends():
                seg = load_segmenter(onnx_path, backend, threads=threads)
                seg.segment(img)  # warm-up (and TensorRT engine build)
                t = time.perf_counter()
                for _ in range(repeats):
                    seg.segment(img)
                row[backend] = round((time.perf_counter() - t) / repeats * 1000, 2)
            row["speedup_vs_torch"] = {b: round(row["torch"] / v, 2) for b, v in row.items() if b != "torch"}
            result["sizes"][f"{w}x{h}"] = row
    result["skipped"] = {"tensorrt": tensorrt_available()[1]} if not tensorrt_available()[0] else {}
    return result


def _bench(args: argparse.Namespace) -> int:
    res = bench_segment(args.model, repeats=args.repeats, threads=args.threads)
    for size, row in res["sizes"].items():
        print(f"{size}: " + ", ".join(f"{b} {v} ms" for b, v in row.items() if b != "speedup_vs_torch"))
    print(json.dumps(res))
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="model (any of its .onnx/.pt/.yaml); default: shipped")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.set_defaults(func=_bench)
