"""Receives the talker's LocalizationStatus and looks up base_link->... at 1.5 s through the
project's TF listener/buffer; prints one JSON line with what it got and exits 0 (or 1 on timeout)."""

import json
import sys
import time

import rclpy
from rclpy.node import Node

from segloc_msgs.msg import LocalizationStatus
from segloc_ros.adapters.tf import TransformUnavailable, create_tf_lookup


def main() -> int:
    rclpy.init()
    node = Node("listener")
    got: list[LocalizationStatus] = []
    node.create_subscription(LocalizationStatus, "status", got.append, 10)
    tf = create_tf_lookup(node)
    deadline = time.monotonic() + 20.0
    result = None
    while time.monotonic() < deadline and result is None:
        rclpy.spin_once(node, timeout_sec=0.05)
        if not got:
            continue
        try:
            T_odom_cam = tf.lookup("odom", "camera", 1_500_000_000)
        except TransformUnavailable:
            continue
        result = {"state": got[-1].state, "consistency": got[-1].consistency,
                  "num_points": got[-1].num_points,
                  "T_odom_cam": T_odom_cam.matrix().tolist(), "tf_impl": type(tf).__name__}
    node.destroy_node()
    rclpy.try_shutdown()
    print(json.dumps(result))
    return 0 if result is not None else 1


if __name__ == "__main__":
    sys.exit(main())
