"""Thin adapters between ROS 2 messages and segloc_core types: images, the Segmentation message,
poses and covariances, TF lookups. Import rclpy message types and segloc_core; no nodes."""
