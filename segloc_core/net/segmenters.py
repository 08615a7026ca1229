"""Choose what segments frames: the network (`segloc_core.net.infer`) or the ground-truth oracle
(`segloc_core.net.oracle`, a diagnostic for rendered worlds), from one command-line word.

`--segmenter model` (the default) opens `--model` with `--backend`; `--segmenter oracle[:CELL_M,K...]`
opens the oracle on `--world` (default: the default world). Both give the same `segment` protocol,
`K`, `model_hash` and `level_camera`, so map build, evaluation and benchmarks take either.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segloc_core.errors import InputError

HELP = ("model (the network, default) or oracle[:CELL_M[,K[,PARENT_CELL_M[,PARENTS]]]]: ground-truth "
        "place labels of a rendered world, the accuracy ceiling (diagnostic; see segloc_core.net.oracle)")


def open_segmenter(segmenter: str = "model", model_path: Path | str | None = None, backend: str = "auto",
                   world: Path | str | None = None, threads: int | None = None, map_path: Path | str | None = None):
    """The segmenter named by `segmenter` (see the module docstring). Without `model_path`, a map's
    own model (`<map>.onnx`, what `segloc map build --train-model` writes) goes before the shipped one."""
    if segmenter == "model":
        from segloc_core.net.infer import load_segmenter

        if model_path is None and map_path is not None and Path(map_path).with_suffix(".onnx").is_file():
            model_path = Path(map_path).with_suffix(".onnx")
        return load_segmenter(model_path, backend, threads)
    if segmenter.startswith("oracle"):
        from segloc_core.net.oracle import OracleSegmenter, OracleSpec
        from segloc_core.paths import world_dir

        return OracleSegmenter(Path(world) if world else world_dir("default"), OracleSpec.parse(segmenter))
    raise InputError(f"unknown segmenter {segmenter!r}: {HELP}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--segmenter and --world (the oracle's ground truth)."""
    parser.add_argument("--segmenter", default="model", help=HELP)
    parser.add_argument("--world", type=Path, default=None,
                        help="rendered world whose ground truth the oracle reads (default: the default world)")
