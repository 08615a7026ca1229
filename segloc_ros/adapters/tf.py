"""TF for segloc: a broadcaster and a time-interpolating buffer that work with or without tf2_ros.

A pip-only install has no tf2_ros, so this module brings the two pieces the nodes need:
`TransformBroadcaster` (/tf and /tf_static with tf2_ros's QoS) and `create_tf_lookup`, which
returns tf2_ros's Buffer+TransformListener where importable and otherwise `TFListener` over our
`TransformBuffer`. Both answer `lookup(target, source, stamp_ns) -> Pose` (T_target_source) and
raise `TransformUnavailable` on unknown frames or extrapolation, like tf2's lookup_transform.

The buffer keeps the frame graph in pytransform3d's TemporalTransformManager; each edge is a
time series interpolated as tf2 does (linear translation, slerp rotation) and refuses to
extrapolate beyond its samples, with static edges valid at all times.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Protocol

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from pytransform3d.transform_manager import StaticTransform, TemporalTransformManager, TimeVaryingTransform
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

from segloc_core.geometry import Pose

TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


class TransformUnavailable(LookupError):
    """No transform between the frames at the requested time (unknown frame or extrapolation)."""


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def pose_to_transform(T_parent_child: Pose, parent: str, child: str,
                      stamp_ns: int) -> TransformStamped:
    """TransformStamped placing `child` in `parent` (tf's convention: maps child points to parent)."""
    msg = TransformStamped()
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.header.frame_id, msg.child_frame_id = parent, child
    x, y, z, w = T_parent_child.quat_xyzw()
    t = T_parent_child.t
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, t)
    msg.transform.rotation.x, msg.transform.rotation.y = float(x), float(y)
    msg.transform.rotation.z, msg.transform.rotation.w = float(z), float(w)
    return msg


def transform_to_pose(msg: TransformStamped) -> Pose:
    """T_parent_child of a TransformStamped; InputError if it holds NaN or a zero quaternion."""
    tr, q = msg.transform.translation, msg.transform.rotation
    return Pose.from_quat_xyzw(np.array([q.x, q.y, q.z, q.w]), np.array([tr.x, tr.y, tr.z]))


class TransformBroadcaster:
    """Publishes /tf and /tf_static with tf2_ros's QoS.

    Static transforms accumulate (keyed by child frame) and go out in one TFMessage, because
    /tf_static keeps only the last message for late joiners.
    """

    def __init__(self, node: Node) -> None:
        self._tf = node.create_publisher(TFMessage, "/tf", TF_QOS)
        self._static = node.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self._static_by_child: dict[str, TransformStamped] = {}

    def send(self, transforms: TransformStamped | Iterable[TransformStamped]) -> None:
        items = [transforms] if isinstance(transforms, TransformStamped) else list(transforms)
        self._tf.publish(TFMessage(transforms=items))

    def send_static(self, transforms: TransformStamped | Iterable[TransformStamped]) -> None:
        items = [transforms] if isinstance(transforms, TransformStamped) else list(transforms)
        for item in items:
            self._static_by_child[item.child_frame_id] = item
        self._static.publish(TFMessage(transforms=list(self._static_by_child.values())))


class _EdgeSeries(TimeVaryingTransform):
    """Time series of one parent->child edge: sorted samples, tf2-style interpolation."""

    def __init__(self, parent: str, child: str, cache_ns: int) -> None:
        self.parent, self.child, self.cache_ns = parent, child, cache_ns
        self.times: list[int] = []
        self.poses: list[Pose] = []

    def insert(self, stamp_ns: int, T_parent_child: Pose) -> None:
        if self.times and stamp_ns < self.times[-1] - self.cache_ns // 2:
            # time jumped back by more than half the cache (bag loop, new replay, a sample stamped
            # in the future before): start over with the new timeline, as tf2 clears its buffer on
            # a jump back; otherwise new samples would be mixed with (or pruned against) the old
            # timeline's. Samples out of order by less are normal and inserted in place.
            self.times, self.poses = [], []
        i = bisect.bisect_left(self.times, stamp_ns)
        if i < len(self.times) and self.times[i] == stamp_ns:
            self.poses[i] = T_parent_child
        else:
            self.times.insert(i, stamp_ns)
            self.poses.insert(i, T_parent_child)
        drop = bisect.bisect_left(self.times, self.times[-1] - self.cache_ns)
        del self.times[:drop], self.poses[:drop]

    def at(self, stamp_ns: int) -> Pose:
        if not self.times:
            raise TransformUnavailable(f"{self.parent} -> {self.child}: no samples since the buffer was cleared")
        if stamp_ns == 0:  # tf2's "latest available"
            return self.poses[-1]
        if not self.times[0] <= stamp_ns <= self.times[-1]:
            raise TransformUnavailable(
                f"{self.parent} -> {self.child}: requested time {stamp_ns * 1e-9:.6f} s is outside "
                f"the buffered [{self.times[0] * 1e-9:.6f}, {self.times[-1] * 1e-9:.6f}] s "
                "(extrapolation)")
        i = bisect.bisect_left(self.times, stamp_ns)
        if self.times[i] == stamp_ns:
            return self.poses[i]
        t0, t1 = self.times[i - 1], self.times[i]
        return self.poses[i - 1].interpolate(self.poses[i], (stamp_ns - t0) / (t1 - t0))

    # pytransform3d interface: A2B maps child (from) points into parent (to), like T_parent_child
    def as_matrix(self, query_time) -> np.ndarray:
        return self.at(int(np.asarray(query_time).reshape(-1)[0])).matrix()

    def check_transforms(self) -> _EdgeSeries:
        return self


class TransformBuffer:
    """Frame graph with per-edge time series; thread-safe; no ROS node needed."""

    def __init__(self, cache_time_s: float = 10.0) -> None:
        self._cache_ns = int(cache_time_s * 1e9)
        self._graph = TemporalTransformManager(strict_check=False, check=True)
        self._edges: dict[str, _EdgeSeries] = {}  # by child frame: a frame has one parent
        self._lock = threading.Lock()

    def set_transform(self, msg: TransformStamped, static: bool = False) -> None:
        parent, child = msg.header.frame_id.lstrip("/"), msg.child_frame_id.lstrip("/")
        pose = transform_to_pose(msg)
        with self._lock:
            if static:
                self._edges.pop(child, None)
                self._graph.add_transform(child, parent, StaticTransform(pose.matrix()))
                return
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent:
                edge = self._edges[child] = _EdgeSeries(parent, child, self._cache_ns)
                edge.insert(stamp_to_ns(msg.header.stamp), pose)
                self._graph.add_transform(child, parent, edge)
            else:
                edge.insert(stamp_to_ns(msg.header.stamp), pose)

    def clear(self, after_ns: int | None = None) -> None:
        """Forget the time-varying samples (static transforms stay) of every edge, or, with
        `after_ns`, of the edges still on an old timeline (newest sample after it): after a jump
        back, edges that already started over with the new timeline keep its samples (clearing
        them dropped the odometry of the frames right after a replay restart)."""
        with self._lock:
            for edge in self._edges.values():
                if after_ns is None or (edge.times and edge.times[-1] > after_ns):
                    edge.times, edge.poses = [], []

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> Pose:
        """T_target_source at `stamp_ns` (0: latest of each edge), interpolated between samples."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return Pose.identity()
        with self._lock:
            try:
                matrix = self._graph.get_transform_at_time(source, target, stamp_ns)
            except KeyError as exc:
                raise TransformUnavailable(
                    f"no transform from {source!r} to {target!r}: {exc.args[0]}") from None
        return Pose.from_matrix(matrix)


class TFLookup(Protocol):
    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> Pose: ...

    def clear(self, after_ns: int | None = None) -> None: ...


class TFListener:
    """Feeds a TransformBuffer from /tf and /tf_static (the pip-only stand-in for tf2_ros)."""

    def __init__(self, node: Node, buffer: TransformBuffer | None = None) -> None:
        self.buffer = buffer or TransformBuffer()
        node.create_subscription(TFMessage, "/tf", self._on_tf, TF_QOS)
        node.create_subscription(TFMessage, "/tf_static", self._on_static, TF_STATIC_QOS)
        self._logger = node.get_logger()

    def _on(self, msg: TFMessage, static: bool) -> None:
        for transform in msg.transforms:
            try:
                self.buffer.set_transform(transform, static)
            except ValueError as exc:  # NaN or degenerate rotation: skip that one transform
                self._logger.warning(f"ignoring transform {transform.header.frame_id} -> "
                                     f"{transform.child_frame_id}: {exc}",
                                     throttle_duration_sec=5.0)

    def _on_tf(self, msg: TFMessage) -> None:
        self._on(msg, False)

    def _on_static(self, msg: TFMessage) -> None:
        self._on(msg, True)

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> Pose:
        return self.buffer.lookup(target, source, stamp_ns)

    def clear(self, after_ns: int | None = None) -> None:
        self.buffer.clear(after_ns)


class _Tf2RosLookup:
    """tf2_ros's Buffer and TransformListener behind the same lookup() (real ROS 2 installs)."""

    def __init__(self, node: Node, tf2_ros, cache_time_s: float) -> None:
        from rclpy.duration import Duration

        self._tf2 = tf2_ros
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=cache_time_s))
        self._listener = tf2_ros.TransformListener(self.buffer, node)

    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> Pose:
        from rclpy.time import Time as RclpyTime

        try:
            msg = self.buffer.lookup_transform(target, source, RclpyTime(nanoseconds=stamp_ns))
        except (self._tf2.LookupException, self._tf2.ExtrapolationException,
                self._tf2.ConnectivityException) as exc:
            raise TransformUnavailable(str(exc)) from None
        return transform_to_pose(msg)

    def clear(self, after_ns: int | None = None) -> None:
        """tf2 has no per-edge view: everything goes (it clears itself on a ROS-clock jump too)."""
        self.buffer.clear()


def create_tf_lookup(node: Node, cache_time_s: float = 10.0, prefer_tf2_ros: bool = True) -> TFLookup:
    """tf2_ros where importable (real ROS 2), else the project's own listener and buffer."""
    if prefer_tf2_ros:
        try:
            import tf2_ros
        except ImportError:
            pass
        else:
            return _Tf2RosLookup(node, tf2_ros, cache_time_s)
    return TFListener(node, TransformBuffer(cache_time_s))
