"""`ros2 launch segloc_ros localize.launch.py [name:=value ...]`: the segloc localization graph.

The graph, its parameter files and its arguments come from `segloc_ros.graph`, which the
project's own launcher (`segloc launch`, for pip-only installs) uses too: one description. The
three nodes are lifecycle nodes; the graph's `lifecycle_manager` configures and activates them.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from segloc_core.errors import InputError
from segloc_ros.graph import (
    LAUNCH_ARGUMENTS,
    PACKAGE,
    SIGINT_GRACE_S,
    localize_graph,
    misspelled_arguments,
    node_exit_failure,
    ros_environment,
)
from segloc_ros.params import validate_params_file


def _nodes(context):
    # ros2 launch ignores undeclared arguments: a typo (mapp:=...) would run on the default map
    typos = misspelled_arguments(context.launch_configurations)
    if typos:
        raise InputError("unknown launch argument(s): " + ", ".join(
            f"{given}:= (did you mean {known}:=?)" for given, known in sorted(typos.items()))
            + "; known: " + ", ".join(arg.name for arg in LAUNCH_ARGUMENTS))
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in LAUNCH_ARGUMENTS}
    graph = localize_graph(values)
    for path in graph.params_files:
        validate_params_file(path, graph.declared())
    return [
        Node(package=PACKAGE, executable=node.executable, name=node.name,
             namespace=graph.namespace, output="screen", respawn=node.respawn, respawn_delay=1.0,
             arguments=list(node.arguments),
             parameters=[*map(str, graph.params_files), node.parameters],
             sigterm_timeout=str(SIGINT_GRACE_S),
             on_exit=None if node.respawn else _fail_graph(graph.fqn(node)))
        for node in graph.nodes
    ]


def _fail_graph(name: str):
    """As in the project's launcher, a node without respawn that exits stops the graph (the
    lifecycle manager exits when a node cannot configure, e.g. a missing map). Raising is how a
    launch file makes `ros2 launch` exit non-zero: the launch service logs the reason, shuts every
    process down and returns 1 (a Shutdown action would exit 0)."""
    def on_exit(event, context):
        reason = node_exit_failure(name, event.returncode, context.is_shutdown)
        if reason:
            raise RuntimeError(reason)
    return on_exit


def generate_launch_description() -> LaunchDescription:
    env = ros_environment()  # the user's own values win; else loopback and our profile
    return LaunchDescription([
        *[DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
          for arg in LAUNCH_ARGUMENTS],
        *[SetEnvironmentVariable(name, env[name])
          for name in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")],
        OpaqueFunction(function=_nodes),
    ])
