"""`segloc` command line: one subcommand per library module, each callable without the CLI.

Subcommands are imported lazily (only the one invoked), so `segloc --help` is instant and a broken
optional dependency of one command does not break the others. A command module exposes
`configure_cli(parser)` which adds its arguments and sets `func(args) -> int | None`; a benchmark
module exposes `configure_bench(parser)` the same way.

Exit codes: 0 success, 1 unexpected error, 2 usage error, 3 missing/broken dependency,
4 bad input data, 5 a result failed its stated check, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence

from segloc_core.errors import EXIT_INTERRUPTED, EXIT_OK, DependencyError, SeglocError

# name -> (module, one-line help). Library commands only; segloc_ros.cli adds the ROS ones.
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("segloc_core.world", "render the procedural default world; export datasets and bags"),
    "train": ("segloc_core.net.train", "train the segmentation network (geometry labels, SegLoc or FGSN mode)"),
    "export": ("segloc_core.net.export", "export a trained model to ONNX (and TensorRT where present)"),
    "map": ("segloc_core.maps.cli", "build, import and inspect labeled maps"),
    "retrieve": ("segloc_core.eval.retrieve", "query a map's image database with global descriptors"),
    "localize": ("segloc_core.eval.localize_images", "localize query images (kapture/COLMAP folder) against a map"),
    "segment": ("segloc_core.eval.segment_images", "draw the model's labels over your own images (PNGs + contact sheet)"),
    "eval": ("segloc_core.eval.evaluate", "evaluate segmentation or localization against ground truth"),
    "bench": ("segloc_core.cli", "speed and accuracy benchmarks (JSON on the last line)"),
}

# benchmark name -> (module, one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "accuracy": ("segloc_core.bench.accuracy", "end-to-end localization: the oracle ceiling vs the model, label metrics"),
    "refine": ("segloc_core.bench.refine", "label-consistency refiner: speed vs K and the direct baseline, accuracy"),
    "place": ("segloc_core.bench.place", "your own place: leave-one-out over a photo folder (map build, training, localize)"),
    "world": ("segloc_core.bench.world", "world rendering frame rate at 320x240 and 640x480"),
    "segment": ("segloc_core.bench.segment", "segmentation ms per frame for each available backend"),
    "retrieval": ("segloc_core.bench.retrieval", "faiss query time for 1k, 10k and 100k database images"),
}


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (rates, durations); nan, inf and <= 0 are usage errors."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (frame counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (0 switches a step off)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _load(module: str, attr: str) -> Callable[[argparse.ArgumentParser], None]:
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:  # a missing or broken dependency below the command's module
        raise DependencyError(f"`{module}` cannot be imported ({exc}); run `make setup` in the "
                              "segloc checkout to (re)install the venv") from exc
    except AttributeError as exc:
        raise SeglocError(f"{module}.{attr} is not available: {exc}") from exc


def _dispatch(parser: argparse.ArgumentParser, table: Mapping[str, tuple[str, str]],
              attr: str, argv: Sequence[str], title: str) -> argparse.Namespace:
    """Parse `argv` whose first word picks an entry of `table`; only that module is imported."""
    sub = parser.add_subparsers(dest="command", metavar=title, required=True)
    for name, (_, help_) in table.items():
        sub.add_parser(name, help=help_, add_help=False)
    if not argv or argv[0] not in table:
        return parser.parse_args(argv)  # prints usage/help, exits 2 or 0
    name = argv[0]
    module, help_ = table[name]
    cmd = argparse.ArgumentParser(prog=f"{parser.prog} {name}", description=help_)
    _load(module, attr)(cmd)
    return cmd.parse_args(argv[1:])


def configure_cli(parser: argparse.ArgumentParser) -> None:
    """`segloc bench`: a sub-table of benchmarks, each owned by the module it measures."""
    parser.set_defaults(func=None)


def main(argv: Sequence[str] | None = None,
         commands: Mapping[str, tuple[str, str]] = COMMANDS,
         benches: Mapping[str, tuple[str, str]] = BENCHES) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="segloc", description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 dependency, 4 bad input, 5 check failed.")
    try:
        if argv and argv[0] == "bench":
            bench = argparse.ArgumentParser(prog="segloc bench", description=commands["bench"][1])
            args = _dispatch(bench, benches, "configure_bench", argv[1:], "BENCHMARK")
        else:
            args = _dispatch(parser, commands, "configure_cli", argv, "COMMAND")
        func = getattr(args, "func", None)
        if func is None:
            parser.error(f"'{' '.join(argv)}' needs a subcommand; see --help")
        code = func(args)
        return EXIT_OK if code is None else int(code)
    except SeglocError as exc:
        print(f"segloc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
