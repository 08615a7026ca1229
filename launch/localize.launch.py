"""`ros2 launch segloc_ros localize.launch.py [name:=value ...]`: the segloc localization graph.

The graph, its parameter files and its arguments come from `segloc_ros.graph`, which the
project's own launcher (`segloc launch`, for pip-only installs) uses too: one description. The
three nodes are lifecycle nodes; the graph's `lifecycle_manager` configures and activates them.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from segloc_core.errors import InputError
from segloc_ros.graph import LAUNCH_ARGUMENTS, PACKAGE, localize_graph, misspelled_arguments, ros_environment
from segloc_ros.params import validate_params_file


def _nodes(context):
    # ros2 launch ignores undeclared arguments: a typo (mapp:=...) would run on the default map
    typos = misspelled_arguments(context.launch_configurations)
    if typos:
        raise InputError("unknown launch argument(s): " + ", ".join(
            f"{given}:= (did you mean {known}:=?)" for given, known in sorted(typos.items())))
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in LAUNCH_ARGUMENTS}
    graph = localize_graph(values)
    for path in graph.params_files:
        validate_params_file(path, graph.declared())
    # as in the project's launcher, a node without respawn that exits stops the graph (the
    # lifecycle manager exits when a node cannot configure, e.g. a missing map)
    return [
        Node(package=PACKAGE, executable=node.executable, name=node.name,
             namespace=graph.namespace, output="screen", respawn=node.respawn, respawn_delay=1.0,
             arguments=list(node.arguments),
             parameters=[*map(str, graph.params_files), node.parameters],
             on_exit=None if node.respawn else [Shutdown(reason=f"{node.name} exited")])
        for node in graph.nodes
    ]


def generate_launch_description() -> LaunchDescription:
    env = ros_environment()  # the user's own values win; else loopback and our profile
    return LaunchDescription([
        *[DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description)
          for arg in LAUNCH_ARGUMENTS],
        *[SetEnvironmentVariable(name, env[name])
          for name in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")],
        OpaqueFunction(function=_nodes),
    ])
