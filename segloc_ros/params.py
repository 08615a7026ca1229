"""Parameters of every segloc node, declared once: the nodes declare them from here, and the
launcher validates parameter files against them before anything starts.

A typo in a YAML file otherwise passes silently (the node keeps its default), which on a vehicle
means a localizer running with settings nobody chose; hence the up-front check, which names the
file, the node, the key and the problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segloc_core.errors import InputError

# Parameters every rclpy node has; a params file may set them without the node declaring them.
BUILTIN_PARAMS = {"use_sim_time": False}


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter; its type is the type of `default`."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive, for int/float
    choices: tuple[str, ...] | None = None    # for strings

    def check(self, value: Any) -> Any:
        """`value` converted to this parameter's type, or ValueError saying what is wrong."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise ValueError(f"{value!r} is outside [{self.range[0]}, {self.range[1]}]")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {list(self.choices)}")
        return value

    def parse(self, text: str) -> Any:
        """Typed value of a command-line string such as a launch argument."""
        kind = type(self.default)
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"expected true/false, got {text!r}")
                value: Any = text.lower() in ("true", "1")
            else:
                value = kind(text)
        except ValueError as exc:
            raise ValueError(f"cannot read {text!r} as {kind.__name__}: {exc}") from None
        return self.check(value)


_TOPICS = (
    ParamSpec("image_topic", "/camera/image_raw", "camera image (sensor_msgs/Image)"),
    ParamSpec("camera_info_topic", "/camera/camera_info", "calibration of image_topic"),
)

NODE_PARAMS: dict[str, tuple[ParamSpec, ...]] = {
    "segmentation_node": _TOPICS + (
        ParamSpec("model_path", "", "ONNX model (or TensorRT engine); empty: the shipped default"),
        ParamSpec("backend", "auto", "inference backend; auto picks the fastest available",
                  choices=("auto", "tensorrt", "onnxruntime", "torch")),
        ParamSpec("segmenter", "model", "model (the network) or oracle[:CELL_M,K,...]: ground-truth "
                  "place labels of a rendered world's frames, found by image stamp (a diagnostic "
                  "for world bags, never on a robot)"),
        ParamSpec("world_path", "", "rendered world the oracle segmenter reads; empty: the default world"),
        ParamSpec("sync_tolerance_s", 0.005, "max stamp difference of paired Image/CameraInfo",
                  range=(0.0, 1.0)),
        ParamSpec("map_encoding", "dense_u8", "class map encoding on the wire",
                  choices=("dense_u8", "topn_u8")),
        ParamSpec("top_n", 8, "classes kept per pixel with map_encoding=topn_u8", range=(1, 255)),
        ParamSpec("threads", 2, "CPU threads of the backend", range=(1, 64)),
    ),
    "retrieval_node": (
        ParamSpec("map_path", "", "labeled map (.segmap); empty: the default world's map"),
        ParamSpec("top_k", 5, "database images retrieved per query", range=(1, 100)),
        ParamSpec("prior_mode", "top1", "pose prior from the top-1 image or a weighted mean",
                  choices=("top1", "weighted")),
        ParamSpec("retrieve_while_tracking", False,
                  "answer every frame, also while the refiner tracks (evaluation of PA)"),
    ),
    "refiner_node": (
        ParamSpec("map_path", "", "labeled map (.segmap); empty: the default world's map"),
        ParamSpec("map_frame", "map", "fixed frame of the map (REP 105)"),
        ParamSpec("odom_frame", "odom", "odometry frame (REP 105)"),
        ParamSpec("base_frame", "base_link", "robot body frame (REP 105)"),
        ParamSpec("use_odometry", True,
                  "publish map->odom using odom->base_link; false: publish map->base_link"),
        ParamSpec("tracking", True, "after a good fix, use the last pose moved by odometry as prior"),
        ParamSpec("min_consistency", 0.12, "reject fixes whose label consistency is below",
                  range=(0.0, 1.0)),
        ParamSpec("min_kappa", 0.1, "reject fixes whose chance-corrected consistency is below",
                  range=(-1.0, 1.0)),
        ParamSpec("max_position_std_m", 2.0, "reject fixes with a larger position std-dev",
                  range=(0.0, 1000.0)),
        ParamSpec("max_points", 5000, "map points refined per frame", range=(100, 200000)),
        ParamSpec("tracking_prior_std_m", 0.03,
                  "tracking: position std-dev of the odometry-propagated prior (0: no prior term)",
                  range=(0.0, 100.0)),
        ParamSpec("tracking_prior_std_per_m", 0.02,
                  "tracking: prior position std-dev added per metre driven since the last fix",
                  range=(0.0, 1.0)),
        ParamSpec("tracking_prior_std_deg", 0.3, "tracking: rotation std-dev of the prior (deg)",
                  range=(0.001, 180.0)),
        ParamSpec("correct_refiner_bias", True,
                  "correct fixes by the map's measured refiner bias and widen their covariance by its "
                  "spread (`segloc map info`); false: the raw refiner optimum"),
        ParamSpec("max_tracking_misses", 5,
                  "rejected tracking fixes in a row before the track is lost (coasting on odometry)",
                  range=(0, 1000)),
        ParamSpec("prior_timeout_s", 2.0, "drop segmentations with no prior after this long",
                  range=(0.0, 60.0)),
        ParamSpec("transform_tolerance_s", 0.1, "future-date map->odom by this (as AMCL does)",
                  range=(0.0, 5.0)),
    ),
}


def _selects(selector: str, node_fqn: str) -> bool:
    """Whether a parameter-file key selects a node (rcl's rules: '/**', '/**/name', fqn, bare)."""
    selector = selector.strip()
    name = node_fqn.rsplit("/", 1)[-1]
    if selector in ("/**", "**"):
        return True
    if selector.startswith("/**/"):
        return selector[4:] == name
    if selector.startswith("/"):
        return selector == node_fqn
    return selector == name and node_fqn.count("/") == 1  # bare name: root namespace only


def validate_params_file(path: Path, nodes: Mapping[str, Sequence[ParamSpec]]) -> None:
    """Check a ROS 2 parameter file against the declared parameters of `nodes` (fqn -> specs).

    Raises InputError naming the file, the node, the key and the problem. Sections that select no
    node of the graph are refused too: they would be silently ignored (the namespace trap).
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"parameter file {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"parameter file {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"parameter file {path}: expected a mapping of node names, "
                         f"got {type(data).__name__}")
    for selector, section in data.items():
        selected = [fqn for fqn in nodes if _selects(str(selector), fqn)]
        if not selected:
            raise InputError(f"parameter file {path}: section {selector!r} selects no node of the "
                             f"graph {sorted(nodes)}; key it by '/**/<name>' or the full name")
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise InputError(f"parameter file {path}: section {selector!r} needs a "
                             "'ros__parameters:' mapping")
        for key, value in section["ros__parameters"].items():
            specs = [spec for fqn in selected for spec in nodes[fqn] if spec.name == key]
            if key in BUILTIN_PARAMS:
                specs = [ParamSpec(key, BUILTIN_PARAMS[key], "built-in")]
            if not specs:
                known = sorted({s.name for fqn in selected for s in nodes[fqn]})
                hint = difflib.get_close_matches(str(key), known, n=1)
                raise InputError(f"parameter file {path}: {selector}: unknown parameter {key!r}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else
                                    f"; known: {known}"))
            for spec in specs:
                try:
                    spec.check(value)
                except ValueError as exc:
                    raise InputError(f"parameter file {path}: {selector}: {key}: {exc}") from None


def declare(node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare `specs` on an rclpy node with descriptions and ranges; return the values."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {}
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.description)
        if spec.choices:
            descriptor.additional_constraints = f"one of {list(spec.choices)}"
        if spec.range is not None and isinstance(spec.default, float):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.range[0]), to_value=float(spec.range[1]))]
        elif spec.range is not None:
            descriptor.integer_range = [IntegerRange(
                from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
        value = node.declare_parameter(spec.name, spec.default, descriptor).value
        try:
            values[spec.name] = spec.check(value)
        except ValueError as exc:
            raise InputError(f"parameter {spec.name}: {exc}") from None
    return values
