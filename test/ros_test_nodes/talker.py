"""Publishes a segloc_msgs/LocalizationStatus and TF (odom->base_link at 1 s and 2 s, static
base_link->camera) over and over, so a listener in another process can look up an interpolated
transform. Writes its pid to --pid-file when given (launcher tests check it is gone afterwards)."""

import os
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from segloc_core.geometry import Pose
from segloc_msgs.msg import LocalizationStatus
from segloc_ros.adapters.tf import TransformBroadcaster, pose_to_transform
from segloc_ros.params import ParamSpec, declare

PARAMS = (ParamSpec("rate_hz", 20.0, "publish rate", range=(1.0, 100.0)),)
T_ODOM_BASE_1S = Pose.from_rotvec([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
T_ODOM_BASE_2S = Pose.from_rotvec([0.0, 0.0, 0.8], [2.0, -1.0, 0.0])
T_BASE_CAM = Pose.from_rotvec([0.0, 0.0, 0.0], [0.5, 0.0, 1.2])


def main() -> None:
    argv = remove_ros_args(sys.argv)
    if "--pid-file" in argv:
        with open(argv[argv.index("--pid-file") + 1], "a") as f:
            f.write(f"{os.getpid()}\n")
    rclpy.init()
    node = Node("talker")
    rate = declare(node, PARAMS)["rate_hz"]
    status_pub = node.create_publisher(LocalizationStatus, "status", 10)
    tf = TransformBroadcaster(node)
    tf.send_static(pose_to_transform(T_BASE_CAM, "base_link", "camera", 0))

    def tick() -> None:
        tf.send([pose_to_transform(T_ODOM_BASE_1S, "odom", "base_link", 1_000_000_000),
                 pose_to_transform(T_ODOM_BASE_2S, "odom", "base_link", 2_000_000_000)])
        status_pub.publish(LocalizationStatus(state=LocalizationStatus.STATE_TRACKING,
                                              reason="test", consistency=0.75, num_points=42))

    node.create_timer(1.0 / rate, tick)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
