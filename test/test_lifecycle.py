"""The nodes' ROS 2 lifecycle, driven by segloc_ros.nodes.lifecycle_manager over real services: a node
subscribes only once active, stays deactivated when an operator deactivates it, is brought up again
after a restart, and a configure that cannot load its map fails with the reason logged while the
node keeps running."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import State, Transition
from rclpy.node import Node

from segloc_ros.graph import ros_environment
from segloc_ros.nodes.lifecycle_manager import LifecycleManager


def _start(tmp_path: Path, map_path: Path, namespace: str, tag: str):
    log = open(tmp_path / f"{namespace}_{tag}.log", "w")
    cmd = [sys.executable, "-m", "segloc_ros.nodes.retrieval_node", "--ros-args",
           "-r", "__node:=retrieval_node", "-r", f"__ns:=/{namespace}", "-p", f"map_path:={map_path}"]
    return subprocess.Popen(cmd, env=ros_environment(), stdout=log, stderr=subprocess.STDOUT), log


def _stop(process) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(20)


def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture()
def client_node():
    context = rclpy.Context()
    context.init()
    node = Node("lifecycle_test", context=context)
    yield node
    node.destroy_node()
    context.try_shutdown()


def test_manager_activates_respects_deactivation_and_revives_restarts(graph_assets, tmp_path,
                                                                       client_node):
    name = "/lc_a/retrieval_node"
    manager = LifecycleManager(client_node, [name])
    process, log = _start(tmp_path, graph_assets["map"], "lc_a", "first")
    try:
        _until(lambda: manager.state(name) == State.PRIMARY_STATE_UNCONFIGURED, 60, "the node")
        assert client_node.count_subscribers("/lc_a/descriptor") == 0  # nothing before active
        assert manager.step()
        assert manager.state(name) == State.PRIMARY_STATE_ACTIVE
        _until(lambda: client_node.count_subscribers("/lc_a/descriptor") == 1, 10, "subscription")

        # an operator deactivates it (ros2 lifecycle set ... deactivate): it stays inactive
        assert manager.transition(name, Transition.TRANSITION_DEACTIVATE, "deactivate", 10)
        _until(lambda: client_node.count_subscribers("/lc_a/descriptor") == 0, 10, "unsubscribe")
        assert manager.step() and manager.state(name) == State.PRIMARY_STATE_INACTIVE

        # the node dies and comes back (respawn): the manager brings it up again
        process.kill()
        process.wait(10)
        _until(lambda: manager.state(name) is None, 20, "the node to disappear")
        process, log = _start(tmp_path, graph_assets["map"], "lc_a", "second")
        _until(lambda: manager.state(name) == State.PRIMARY_STATE_UNCONFIGURED, 60, "the restart")
        assert manager.step() and manager.state(name) == State.PRIMARY_STATE_ACTIVE
    finally:
        assert _stop(process) == 0
        log.close()


def test_configure_without_map_fails_and_the_node_keeps_running(tmp_path, client_node):
    name = "/lc_b/retrieval_node"
    manager = LifecycleManager(client_node, [name])
    missing = tmp_path / "no_such.segmap"
    process, log = _start(tmp_path, missing, "lc_b", "first")
    try:
        _until(lambda: manager.state(name) == State.PRIMARY_STATE_UNCONFIGURED, 60, "the node")
        assert not manager.step()  # configure failed: the manager would stop the graph
        assert process.poll() is None
        assert manager.state(name) == State.PRIMARY_STATE_UNCONFIGURED
    finally:
        assert _stop(process) == 0
        log.close()
    text = (tmp_path / "lc_b_first.log").read_text()
    assert "cannot configure" in text and str(missing) in text


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_launcher_stops_the_graph_when_a_node_cannot_configure(tmp_path, damage):
    # through a parameter file: `map:=` on the command line is checked before any node starts
    # (test_setup), a map named in a parameter file is first read by the nodes' configure; the
    # reason (no file, or one flipped bit in the header) must reach the launcher's output
    missing = tmp_path / f"{damage}.segmap"
    if damage == "flipped":
        from test_maps_format import synthetic_map

        from segloc_core.maps.format import serialize_map

        data = bytearray(serialize_map(synthetic_map(n_points=300, n_images=5)[0]))
        data[bytes(data).index(b'"nbytes"') + 2] ^= 0x04  # "nbytes" -> "njytes": still valid JSON
        missing.write_bytes(bytes(data))
    params = tmp_path / "params.yaml"
    params.write_text(f"/**/retrieval_node:\n  ros__parameters:\n    map_path: {missing}\n"
                      f"/**/refiner_node:\n  ros__parameters:\n    map_path: {missing}\n")
    out = subprocess.run([sys.executable, "-m", "segloc_ros.cli", "launch", f"params_file:={params}",
                          "namespace:=lc_c"], env=ros_environment(), capture_output=True, text=True,
                         timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "cannot configure" in text and str(missing) in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    if damage == "flipped":
        assert "corrupt map file" in text, text[-3000:]
    assert "lifecycle_manager exited with code 4" in text, text[-3000:]


@pytest.mark.parametrize("when_s, times", [(0.3, 1), (0.8, 1), (1.5, 1), (8.0, 2)])
def test_ctrl_c_early_or_twice_leaves_no_traceback(when_s, times):
    """A terminal's Ctrl-C reaches every process of the group, so a node gets SIGINT while still
    importing its libraries, while rclpy builds it (the context is shut down under the node's
    constructor: an RCLError traceback, seen under load), or twice (terminal + launcher) while it
    shuts down: it must exit 0 without a traceback."""
    process = subprocess.Popen([sys.executable, "-m", "segloc_ros.nodes.retrieval_node"], env=ros_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(when_s)
    for _ in range(times):
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
