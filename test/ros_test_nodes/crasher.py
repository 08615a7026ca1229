"""A node that appends a line to --log and exits with code 3 after a moment: a node that dies."""

import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.utilities import remove_ros_args


def main() -> int:
    argv = remove_ros_args(sys.argv)
    with open(argv[argv.index("--log") + 1], "a") as f:
        f.write("started\n")
    rclpy.init()
    node = Node("crasher")
    time.sleep(0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 3


if __name__ == "__main__":
    sys.exit(main())
