"""The `segloc` console script: the library's commands plus the ones that need a ROS graph."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from segloc_core import cli as core_cli

COMMANDS = {
    **core_cli.COMMANDS,
    "launch": ("segloc_ros.launcher", "start the localization node graph (pip-only `ros2 launch`)"),
    "bag": ("segloc_ros.tools.bag", "play a rosbag2 into the graph (MCAP/sqlite3) or record topics to MCAP"),
    "eval": ("segloc_ros.tools.bag_eval", core_cli.COMMANDS["eval"][1] + "; --bag replays through the graph"),
    "demo": ("segloc_ros.tools.demo", "the whole product on the default world: render, map, replay, evaluate"),
}
BENCHES = {
    **core_cli.BENCHES,
    "pipeline": ("segloc_ros.tools.bench_pipeline", "the node graph on a world bag: latency, rate, drops"),
    "encoding": ("segloc_ros.tools.bench_encoding", "class-map message encodings: bytes, time, accuracy"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return core_cli.main(argv, COMMANDS, BENCHES)


if __name__ == "__main__":
    sys.exit(main())
