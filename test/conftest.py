"""Test-wide environment: DDS on loopback, a ROS domain of this test process's own, and the
project's Fast DDS profile, set before anything imports rclpy."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Distinct per test process, so concurrent runs (CI next to a developer's run) do not cross-talk.
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds.xml"))
