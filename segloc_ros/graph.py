"""The localization node graph, described once for `ros2 launch` and for the project's launcher:
the three lifecycle nodes and `segloc_ros.nodes.lifecycle_manager`, which drives their transitions.

`launch/localize.launch.py` turns `localize_graph()` into launch_ros Node actions; `segloc launch`
(for pip-only installs without launch_ros) turns the same description into processes. Both take the
same `name:=value` launch arguments, defined in LAUNCH_ARGUMENTS.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segloc_core.errors import InputError
from segloc_ros.params import NODE_PARAMS, ParamSpec

PACKAGE = "segloc_ros"


def share_dir() -> Path:
    """The package's share directory: the checkout in development, else the ament index."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "package.xml").is_file() and (checkout / "config").is_dir():
        return checkout
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError) as exc:
        raise InputError(f"cannot find the {PACKAGE} share directory ({exc}); source the ROS 2 "
                         "workspace or install the package") from None


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    # (node type, parameter) pairs this argument sets; empty: handled by localize_graph itself
    sets: tuple[tuple[str, str], ...] = ()


LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("namespace", "segloc", "namespace of the three nodes and their topics"),
    LaunchArgument("params_file", "", "extra parameter file applied after config/segloc.yaml"),
    # Arguments that set node parameters default to "": keep the parameter files' value.
    LaunchArgument("map", "", "labeled map (.segmap); default: the default world's map",
                   (("retrieval_node", "map_path"), ("refiner_node", "map_path"))),
    LaunchArgument("model", "", "segmentation model; default: the shipped model",
                   (("segmentation_node", "model_path"),)),
    LaunchArgument("backend", "", "auto | tensorrt | onnxruntime | torch",
                   (("segmentation_node", "backend"),)),
    LaunchArgument("segmenter", "", "model (default) | oracle[:CELL_M,K,...]: ground-truth labels of a "
                   "world bag, the accuracy ceiling (diagnostic)", (("segmentation_node", "segmenter"),)),
    LaunchArgument("world", "", "rendered world the oracle segmenter reads (default: the default world)",
                   (("segmentation_node", "world_path"),)),
    LaunchArgument("image_topic", "", "camera image topic",
                   (("segmentation_node", "image_topic"),)),
    LaunchArgument("camera_info_topic", "", "camera info topic",
                   (("segmentation_node", "camera_info_topic"),)),
    LaunchArgument("tracking", "", "use odometry-propagated priors after a good fix",
                   (("refiner_node", "tracking"),)),
    LaunchArgument("use_odometry", "", "publish map->odom (true) or map->base_link (false)",
                   (("refiner_node", "use_odometry"),)),
    LaunchArgument("use_sim_time", "false", "follow /clock (bag replay)"),
    LaunchArgument("respawn", "true", "restart a node that dies (false: stop the graph)"),
)


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: how `ros2 launch` and the project's launcher start it."""

    name: str
    executable: str          # console script in lib/segloc_ros (ros2 launch / ros2 run)
    module: str              # `python -m module` (project launcher)
    declared: tuple[ParamSpec, ...] = ()   # the parameters the node declares
    parameters: dict[str, Any] = field(default_factory=dict)  # applied after the params files
    respawn: bool = True
    arguments: tuple[str, ...] = ()         # command-line arguments before --ros-args


@dataclass(frozen=True)
class Graph:
    namespace: str
    params_files: tuple[Path, ...]
    nodes: tuple[NodeSpec, ...]

    def fqn(self, node: NodeSpec) -> str:
        return f"/{self.namespace}/{node.name}" if self.namespace else f"/{node.name}"

    def declared(self) -> dict[str, tuple[ParamSpec, ...]]:
        """Fully qualified node name -> declared parameters (what params files are checked against)."""
        return {self.fqn(node): node.declared for node in self.nodes}


def ros_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the graph's processes: DDS on loopback, the big-SHM Fast DDS profile.

    Keeps the whole parent environment (the ROS wheels re-exec with LD_LIBRARY_PATH set; a child
    that loses it cannot import rclpy). Values the caller already set win.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(share_dir() / "config" / "fastdds.xml"))
    return env


# Seconds a node gets to exit after SIGINT before SIGTERM, in both launchers. A node stopped during
# start-up may still be importing ONNX Runtime / loading its map on a loaded machine (ros2 launch's
# default of 5 s escalated there: issue 15).
SIGINT_GRACE_S = 10.0


def node_exit_failure(node: str, returncode: int | None, shutting_down: bool) -> str | None:
    """Why the exit of a node without respawn fails the graph (None: it does not). Such a node
    exiting while the graph runs stops it, and the launch must then exit non-zero (a supervisor or
    CI sees a dead graph); exits after a stop was requested (Ctrl-C, shutdown) are the stop itself."""
    if shutting_down:
        return None
    how = "with code 0" if returncode == 0 else (
        f"on signal {-returncode}" if returncode is not None and returncode < 0 else f"with code {returncode}")
    return f"{node} exited {how} while the graph was running (respawn is off): the graph is stopped"


def misspelled_arguments(names: Iterable[str]) -> dict[str, str]:
    """{name: launch argument it is probably a typo of} for names that are not launch arguments
    but close to one (`mapp` -> `map`). `ros2 launch` ignores arguments a launch file does not
    declare, and a parent launch file's own arguments reach this one too, so only near misses
    are errors there; the project's launcher refuses every unknown name."""
    known = [arg.name for arg in LAUNCH_ARGUMENTS]
    return {name: close[0] for name in names if name not in known
            and (close := difflib.get_close_matches(name, known, n=1, cutoff=0.75))}


def parse_launch_arguments(values: Mapping[str, str]) -> dict[str, str]:
    """Launch argument values with defaults filled in; InputError names an unknown argument."""
    known = {arg.name: arg for arg in LAUNCH_ARGUMENTS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = "".join(f" ({a}: did you mean {b}?)" for a, b in misspelled_arguments(unknown).items())
        raise InputError(f"unknown launch argument(s) {unknown}{hints}; known: {sorted(known)}")
    return {name: values.get(name, arg.default) for name, arg in known.items()}


def _spec(node_type: str, param: str) -> ParamSpec:
    return next(spec for spec in NODE_PARAMS[node_type] if spec.name == param)


_NAMESPACE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*)?$")


def localize_graph(values: Mapping[str, str]) -> Graph:
    """The segmentation -> retrieval -> refiner graph for the given launch arguments."""
    args = parse_launch_arguments(values)
    overrides: dict[str, dict[str, Any]] = {name: {} for name in NODE_PARAMS}
    for arg in LAUNCH_ARGUMENTS:
        for node_type, param in arg.sets if args[arg.name] != "" else ():
            try:
                overrides[node_type][param] = _spec(node_type, param).parse(args[arg.name])
            except ValueError as exc:
                raise InputError(f"launch argument {arg.name}:={args[arg.name]}: {exc}") from None
    try:
        sim_time = ParamSpec("use_sim_time", False, "").parse(args["use_sim_time"])
        respawn = ParamSpec("respawn", True, "").parse(args["respawn"])
    except ValueError as exc:
        raise InputError(f"launch argument: {exc}") from None
    namespace = args["namespace"].strip("/")
    if not _NAMESPACE.match(namespace):
        raise InputError(f"launch argument namespace:={args['namespace']!r} is not a ROS namespace "
                         "(tokens of letters, digits and '_' separated by '/', none starting with a digit)")
    files = [share_dir() / "config" / "segloc.yaml"]
    if args["params_file"]:
        files.append(Path(args["params_file"]).expanduser().resolve())
    nodes = tuple(
        NodeSpec(name, name, f"segloc_ros.nodes.{name}", specs,
                 {**overrides[name], "use_sim_time": sim_time}, respawn)
        for name, specs in NODE_PARAMS.items())
    graph = Graph(namespace, tuple(files), nodes)
    # the lifecycle nodes wait for configure/activate: the manager brings them (and respawned
    # ones) up; it exits when a node cannot configure, which stops the graph (no respawn)
    manager = NodeSpec("lifecycle_manager", "lifecycle_manager", "segloc_ros.nodes.lifecycle_manager",
                       (), {"use_sim_time": sim_time}, respawn=False,
                       arguments=tuple(graph.fqn(node) for node in nodes))
    return Graph(graph.namespace, graph.params_files, (*nodes, manager))
