"""`segloc launch`: start the node graph as processes where `ros2 launch` does not exist.

Same graph, same parameter files and same `name:=value` arguments as `launch/localize.launch.py`
(both come from `segloc_ros.graph`). Parameter files are checked before any node starts. A node
that dies is reported and restarted (respawn) or stops the graph with a non-zero exit; SIGINT and
SIGTERM shut every node down cleanly (SIGINT, then SIGTERM, then SIGKILL after grace periods).
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from segloc_core.errors import InputError
from segloc_ros.graph import LAUNCH_ARGUMENTS, SIGINT_GRACE_S, Graph, NodeSpec, localize_graph, node_exit_failure, ros_environment
from segloc_ros.params import validate_params_file

log = logging.getLogger("segloc.launch")


@dataclass
class _Running:
    spec: NodeSpec
    process: subprocess.Popen
    restarts: int = 0


def node_command(graph: Graph, node: NodeSpec, overrides_file: Path) -> list[str]:
    """The command line of one node: `python -m module --ros-args ...` (same args as ros2 launch)."""
    cmd = [sys.executable, "-m", node.module, *node.arguments,
           "--ros-args", "-r", f"__node:={node.name}"]
    if graph.namespace:
        cmd += ["-r", f"__ns:=/{graph.namespace}"]
    for path in (*graph.params_files, overrides_file):
        cmd += ["--params-file", str(path)]
    return cmd


def write_overrides(graph: Graph, directory: Path) -> Path:
    """Launch-argument values as one more parameter file keyed by fully qualified node name
    (what launch_ros does with dict parameters), applied after the user's files."""
    path = directory / "launch_overrides.yaml"
    path.write_text(yaml.safe_dump(
        {graph.fqn(node): {"ros__parameters": node.parameters} for node in graph.nodes}))
    return path


def run_graph(graph: Graph, env: Mapping[str, str] | None = None, max_restarts: int = 5,
              restart_delay_s: float = 1.0, shutdown_timeout_s: float = SIGINT_GRACE_S) -> int:
    """Run every node of `graph` until SIGINT/SIGTERM (exit 0) or a fatal node exit (exit 1)."""
    declared = graph.declared()
    for path in graph.params_files:
        validate_params_file(path, declared)
    env = ros_environment(env)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="segloc_launch_") as tmp:
        overrides = write_overrides(graph, Path(tmp))
        running: list[_Running] = []
        code = 0
        try:
            for node in graph.nodes:
                running.append(_Running(node, subprocess.Popen(node_command(graph, node, overrides),
                                                               env=env)))
                log.info("started %s (pid %d)", graph.fqn(node), running[-1].process.pid)
            while stop["signal"] is None:
                time.sleep(0.1)
                for item in running:
                    status = item.process.poll()
                    if status is None:
                        continue
                    if not item.spec.respawn:
                        log.error("%s", node_exit_failure(graph.fqn(item.spec), status, shutting_down=False))
                    else:
                        log.error("%s exited with code %d", graph.fqn(item.spec), status)
                        if item.restarts >= max_restarts:
                            log.error("stopping the graph: it was restarted %d times already", item.restarts)
                    if not item.spec.respawn or item.restarts >= max_restarts:
                        code = 1
                        stop["signal"] = "node-exit"
                        break
                    time.sleep(restart_delay_s)
                    item.restarts += 1
                    item.process = subprocess.Popen(node_command(graph, item.spec, overrides), env=env)
                    log.warning("restarted %s (pid %d, restart %d/%d)", graph.fqn(item.spec),
                                item.process.pid, item.restarts, max_restarts)
        finally:
            _shutdown([item.process for item in running], shutdown_timeout_s)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code


def _shutdown(processes: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGINT (rclpy's clean shutdown), then SIGTERM, then SIGKILL, each after a grace period."""
    for sig, grace in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        alive = [p for p in processes if p.poll() is None]
        if not alive:
            return
        for process in alive:
            process.send_signal(sig)
        deadline = time.monotonic() + grace
        for process in alive:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`name:=value` words (ros2 launch syntax) -> dict; InputError on any other form."""
    values = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise InputError(f"launch argument {item!r} is not of the form name:=value")
        values[name] = value
    return values


def configure_cli(parser: argparse.ArgumentParser) -> None:
    arguments = "\n".join(f"  {a.name}:={a.default or '<from params>'}  {a.description}"
                          for a in LAUNCH_ARGUMENTS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"launch arguments (same as localize.launch.py):\n{arguments}"
    parser.add_argument("arguments", nargs="*", metavar="name:=value")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the parameter files and print the node commands; start nothing")
    parser.set_defaults(func=_main)


def preflight(values: dict[str, str]) -> None:
    """Check the map and model named on the command line before any process starts, so a bad
    one is an InputError (exit 4, its reason on stderr) rather than a node failing its configure
    transition with the reason only in that node's log."""
    from segloc_core.maps.format import load_map
    from segloc_core.net.infer import model_files

    if values.get("map"):
        load_map(Path(values["map"]))
    if values.get("model"):
        model_files(values["model"])


def _main(args: argparse.Namespace) -> int:
    values = parse_assignments(args.arguments)
    graph = localize_graph(values)
    if not args.dry_run:
        preflight(values)
    if args.dry_run:
        for path in graph.params_files:
            validate_params_file(path, graph.declared())
        for node in graph.nodes:
            print(" ".join(node_command(graph, node, Path("<overrides>"))), node.parameters)
        return 0
    return run_graph(graph)
