"""segloc core library: segmentation-based visual localization (SegLoc) without ROS.

This package never imports rclpy or ROS message packages; `segloc_ros` adapts it to a ROS 2 graph.
"""

__version__ = "0.1.0"
