"""The two-command set-up delivered what everything else relies on: ROS 2 from wheels, the
interface packages built into the venv, and the `segloc` CLI with meaningful exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_ros_and_interfaces_import():
    out = subprocess.run([sys.executable, "-c", "import rclpy, tf2_msgs.msg, segloc_msgs.msg, "
                          "segloc_msgs.srv; print('ok')"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_tf2_msgs_has_the_distribution_type_hash():
    """Our tf2_msgs (built only where none exists) must interoperate with a real ROS 2 graph."""
    import tf2_msgs
    from rosbags.typesys import Stores, get_typestore

    share = Path(tf2_msgs.__file__).resolve().parents[4] / "share" / "tf2_msgs" / "msg"
    description = json.loads((share / "TFMessage.json").read_text())
    ours = description["type_hashes"][0]["hash_string"]
    assert ours == get_typestore(Stores.ROS2_KILTED).hash_rihs01("tf2_msgs/msg/TFMessage")


def _segloc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segloc_ros.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_help_lists_commands_and_exit_codes():
    out = _segloc("--help")
    assert out.returncode == 0
    for command in ("world", "train", "map", "eval", "bench", "launch"):
        assert command in out.stdout
    assert "Exit codes" in out.stdout


@pytest.mark.parametrize("args, code", [
    ((), 2), (("no-such-command",), 2), (("launch", "--dry-run", "tracking:=maybe"), 4),
    (("launch", "--dry-run", "map:=/tmp/x.segmap"), 0), (("launch", "--dry-run", "namespace:=a b"), 4),
    (("launch", "namespace:=a b"), 4), (("launch", "--dry-run", "namespace:=robot_1/segloc"), 0),
])
def test_cli_exit_codes(args, code):
    out = _segloc(*args)
    assert out.returncode == code, out.stderr
    if code == 4:
        assert out.stderr.startswith("segloc: error:")



@pytest.mark.parametrize("args", [
    ("bag", "play", "some_bag", "--rate", "nan"), ("bag", "play", "some_bag", "--rate", "0"),
    ("eval", "--bag", "some_bag", "--rate", "inf"), ("demo", "--frames", "-5"), ("demo", "--rate", "0"),
    ("bench", "pipeline", "--rate", "-1"), ("bench", "world", "--frames", "0"),
])
def test_nonsense_numbers_are_usage_errors(args, tmp_path):
    """Rates and frame counts that are nan, inf, zero or negative are refused at parsing (exit 2,
    one usage line, no traceback), before anything is rendered, written or launched."""
    env = {**__import__("os").environ, "SEGLOC_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "segloc_ros.cli", *args], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and ("must be" in out.stderr or "not a" in out.stderr)
    assert not any(tmp_path.iterdir())  # nothing written (demo would render, map and write a bag)


def test_launch_refuses_a_bad_map_or_model_before_starting_nodes(tmp_path):
    bad = tmp_path / "bad.segmap"
    bad.write_bytes(b"not a map")
    for arg in (f"map:={bad}", f"map:={tmp_path / 'missing.segmap'}", f"model:={tmp_path / 'missing.onnx'}"):
        out = _segloc("launch", arg)
        assert out.returncode == 4, out.stderr
        assert out.stderr.startswith("segloc: error:") and "Traceback" not in out.stderr
        assert "started" not in out.stderr  # no node process was launched


def test_missing_dependency_names_the_fix():
    """A command whose module cannot import exits 3 with one line that says how to fix it."""
    script = ("import sys; sys.modules['faiss'] = None;"  # what a broken faiss install looks like
              "from segloc_ros.cli import main; sys.exit(main(['bench', 'retrieval']))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "make setup" in out.stderr and "faiss" in out.stderr
