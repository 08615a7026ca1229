"""Small nodes that exercise the project's ROS plumbing in separate processes during tests."""
