"""The segloc nodes: segmentation -> retrieval -> refiner (see segloc_ros.graph), their shared
`runtime` and the `lifecycle_manager`.

Ctrl-C conduct: a terminal sends SIGINT to every process of the group, and a launcher forwards its
own, so a node can get it twice, or while it is still importing its libraries. Until rclpy installs
its handler, SIGINT ends the process quietly (exit 0, no traceback); once a node is shutting down,
further SIGINTs are ignored (`runtime.quiet_shutdown`).
"""

import signal
import sys


def _exit_quietly(_signum, _frame) -> None:
    sys.exit(0)


signal.signal(signal.SIGINT, _exit_quietly)
