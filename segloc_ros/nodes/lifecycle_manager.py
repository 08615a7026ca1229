"""lifecycle_manager: brings the segloc nodes to `active` and keeps them there.

Both launchers start it beside the nodes (`ros2 launch` and `segloc launch` alike), with the fully
qualified names of the nodes to manage as its arguments:

    python -m segloc_ros.nodes.lifecycle_manager /segloc/segmentation_node /segloc/refiner_node ...

Every `POLL_S` it asks each node for its state (lifecycle_msgs/srv/GetState) and moves an
unconfigured node through configure, an inactive one through activate: a node that was respawned
comes back unconfigured and is brought up again without anyone restarting the graph. A failed
configure (missing map or model; the node logs why) ends the manager with exit code 4, which
stops the project's launcher; `ros2 lifecycle set` still works on the nodes by hand.
Nodes that are deactivated on purpose stay so: only a node found unconfigured is brought up, and
an inactive one only once after its configure (`--keep-active` re-activates inactive nodes too).
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from segloc_ros.nodes.runtime import quiet_shutdown

POLL_S = 1.0
CALL_TIMEOUT_S = 5.0
CONFIGURE_TIMEOUT_S = 120.0  # loading a map and building a TensorRT engine take a while


class LifecycleManager:
    """Drives the managed nodes' transitions from one rclpy node (see the module docstring)."""

    def __init__(self, node: Node, names: list[str], keep_active: bool = False) -> None:
        self.node = node
        # one executor for the manager's life: rclpy.spin_until_future_complete builds a new one
        # per call, which cost a quarter of a core at two polls per second
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.keep_active = keep_active
        self.get = {name: node.create_client(GetState, f"{name}/get_state") for name in names}
        self.change = {name: node.create_client(ChangeState, f"{name}/change_state")
                       for name in names}
        self.configured: set[str] = set()  # configured by us since the node (re)appeared

    def _call(self, client, request, timeout_s: float):
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if not future.done():
            client.remove_pending_request(future)
            return None
        return future.result()

    def state(self, name: str) -> int | None:
        """The node's lifecycle state id, or None when it does not answer (not started yet)."""
        if not self.get[name].service_is_ready():
            self.configured.discard(name)  # gone: a node that comes back starts over
            return None
        response = self._call(self.get[name], GetState.Request(), CALL_TIMEOUT_S)
        return None if response is None else response.current_state.id

    def transition(self, name: str, transition_id: int, label: str, timeout_s: float) -> bool:
        response = self._call(self.change[name], ChangeState.Request(
            transition=Transition(id=transition_id)), timeout_s)
        ok = response is not None and response.success
        if ok:  # two calls: rclpy fixes a logging call site's severity at its first use
            self.node.get_logger().info(f"{label} {name}: done")
        else:
            self.node.get_logger().error(f"{label} {name}: FAILED (see its log)")
        return ok

    def step(self) -> bool:
        """One pass over the nodes; False when a node failed to configure."""
        for name in self.get:
            state = self.state(name)
            if state == State.PRIMARY_STATE_UNCONFIGURED:
                if not self.transition(name, Transition.TRANSITION_CONFIGURE, "configure",
                                       CONFIGURE_TIMEOUT_S):
                    return False
                self.configured.add(name)
                state = State.PRIMARY_STATE_INACTIVE
            if state == State.PRIMARY_STATE_INACTIVE and (name in self.configured or self.keep_active):
                self.configured.discard(name)
                self.transition(name, Transition.TRANSITION_ACTIVATE, "activate", CALL_TIMEOUT_S)
        return True


def main(argv: list[str] | None = None) -> int:
    args = rclpy.utilities.remove_ros_args(sys.argv if argv is None else argv)[1:]
    parser = argparse.ArgumentParser(prog="lifecycle_manager", description=__doc__.split("\n")[0])
    parser.add_argument("nodes", nargs="+", help="fully qualified names of the managed nodes")
    parser.add_argument("--keep-active", action="store_true",
                        help="also re-activate nodes that were deactivated by hand")
    options = parser.parse_args(args)
    rclpy.init(args=sys.argv if argv is None else argv)
    node = Node("lifecycle_manager")
    manager = LifecycleManager(node, options.nodes, options.keep_active)
    code = 0
    try:
        while rclpy.ok():
            if not manager.step():
                node.get_logger().fatal("a node failed to configure; stopping")
                code = 4
                break
            time.sleep(POLL_S)  # responses are taken while waiting for them, nothing else to spin
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        quiet_shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
