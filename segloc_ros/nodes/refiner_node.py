"""refiner_node: Segmentation (+ PosePrior) -> PoseWithCovarianceStamped, TF and status.

Pairs each segmentation with the prior of the same stamp (or, while tracking, with the last fix
moved by odometry), runs `segloc_core.localize.localizer.Localizer` and, for an accepted fix, publishes the
pose of `base_frame` in `map_frame` and TF following REP 105: map->odom computed from
odom->base_link at the image stamp (the robot's odometry keeps owning odom->base_link), or
map->base_link when `use_odometry` is false. map->odom is re-sent at 20 Hz, future-dated by
`transform_tolerance_s` as AMCL does, so TF users never extrapolate between fixes.

Missing transforms, bad camera info, malformed maps and stale or unpaired frames are skipped with
a throttled warning naming the reason; the node keeps running. `/initialpose` (RViz) gives an
operator prior for the next frame.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped

from segloc_core.errors import InputError
from segloc_core.geometry import Pose
from segloc_core.localize.localizer import Fix, Localizer, LocalizerConfig, PriorSource, State
from segloc_core.maps.cli import bias_text
from segloc_core.maps.format import load_map
from segloc_core.paths import map_path
from segloc_msgs.msg import LocalizationStatus, PosePrior, Segmentation
from segloc_ros.adapters.image_conversion import camera_info_to_camera
from segloc_ros.adapters.pose_msgs import change_body_covariance, msg_to_pose, to_pose_with_covariance
from segloc_ros.adapters.segmentation_msg import unpack_levels
from segloc_ros.adapters.tf import (
    TransformBroadcaster,
    TransformUnavailable,
    create_tf_lookup,
    ns_to_stamp,
    pose_to_transform,
    stamp_to_ns,
)
from segloc_ros.nodes.runtime import ManagedNode, StampGuard, spin_node

THROTTLE_S = 5.0
_STATE_MSG = {State.UNINITIALIZED: LocalizationStatus.STATE_UNINITIALIZED,
              State.LOCALIZED: LocalizationStatus.STATE_LOCALIZED,
              State.TRACKING: LocalizationStatus.STATE_TRACKING, State.LOST: LocalizationStatus.STATE_LOST}


class RefinerNode(ManagedNode):
    def __init__(self) -> None:
        super().__init__("refiner_node")
        self.localizer = None
        # TF in and out lives as long as the node: the buffer fills while the node is inactive
        self.tf = create_tf_lookup(self)
        self.broadcaster = TransformBroadcaster(self)

    # -- lifecycle ---------------------------------------------------------------------------------
    def setup(self) -> None:
        path = Path(self.p["map_path"]) if self.p["map_path"] else map_path()
        labeled_map = load_map(path)
        if labeled_map.meta.frame_id != self.p["map_frame"]:
            self.get_logger().warning(f"map {path} is in frame {labeled_map.meta.frame_id!r}; "
                                      f"publishing it as {self.p['map_frame']!r}")
        self.localizer = Localizer(labeled_map, LocalizerConfig(
            min_consistency=self.p["min_consistency"], min_kappa=self.p["min_kappa"],
            max_position_std_m=self.p["max_position_std_m"],
            max_points=self.p["max_points"], tracking=self.p["tracking"],
            tracking_prior_std_m=self.p["tracking_prior_std_m"],
            tracking_prior_std_per_m=self.p["tracking_prior_std_per_m"],
            tracking_prior_std_deg=self.p["tracking_prior_std_deg"],
            max_tracking_misses=self.p["max_tracking_misses"],
            correct_refiner_bias=self.p["correct_refiner_bias"]))
        self.get_logger().info(f"map {path}: {len(labeled_map)} points, K={labeled_map.meta.K}; refiner bias "
                               f"{bias_text(labeled_map, self.p['correct_refiner_bias'])}")
        self._lock = threading.Lock()
        self._priors: OrderedDict[int, PosePrior] = OrderedDict()    # by image stamp
        self._waiting: OrderedDict[int, Segmentation] = OrderedDict()  # segmentations without prior
        self._initialpose: PoseWithCovarianceStamped | None = None
        self._last_odom_cam: Pose | None = None   # T_odom_cam at the last accepted fix
        self._T_map_odom: Pose | None = None
        self._stamps = StampGuard()
        self.pub_pose = self.publisher(PoseWithCovarianceStamped, "pose", 10)
        self.pub_status = self.publisher(LocalizationStatus, "status", 10)

    def connect(self) -> list:
        return [self.create_subscription(Segmentation, "segmentation", self.on_segmentation, 2),
                self.create_subscription(PosePrior, "prior", self.on_prior, 20),
                self.create_subscription(PoseWithCovarianceStamped, "/initialpose",
                                         self.on_initialpose, 1),
                self.create_timer(0.05, self.republish_map_odom)]

    def release(self) -> None:
        self.localizer = None
        self._T_map_odom = None

    def diagnostics_extra(self) -> dict[str, str]:
        return {"state": self.localizer.state.name.lower() if self.localizer else "unconfigured",
                "waiting for prior": str(len(self._waiting))}

    # -- pairing (executor thread) ----------------------------------------------------------------
    def _skip(self, reason: str, stamp_ns: int | None = None) -> None:
        if self.stats.skip(reason):
            self.get_logger().warning(f"skipping frame: {reason}")
        self._publish_status(stamp_ns, reason=reason)

    def on_segmentation(self, msg: Segmentation) -> None:
        self.stats.received += 1
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            needs_prior = self.localizer.needs_global_prior() and self._initialpose is None
            if needs_prior and stamp not in self._priors:
                self._waiting[stamp] = msg
                self._expire(stamp)
                return
        self.worker.put(msg)

    def on_prior(self, msg: PosePrior) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self._priors[stamp] = msg
            while len(self._priors) > 50:
                self._priors.popitem(last=False)
            ready = self._waiting.pop(stamp, None)
            if msg.forced:  # relocalization requested: frames wait for global priors again
                self.localizer.reset()
        if ready is not None:
            self.worker.put(ready)

    def _expire(self, newest_ns: int) -> None:
        """Drop segmentations whose prior did not come within prior_timeout_s (lock held)."""
        limit = newest_ns - int(self.p["prior_timeout_s"] * 1e9)
        for stamp in [s for s in self._waiting if s < limit]:
            del self._waiting[stamp]
            reason = "no pose prior arrived within prior_timeout_s (is retrieval_node running?)"
            if self.stats.skip(reason):
                self.get_logger().warning(f"skipping frame: {reason}")
            self._publish_status(stamp, reason=reason)  # tells retrieval this refiner needs priors

    def on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            msg_to_pose(msg.pose.pose)
        except InputError as exc:
            self.get_logger().warning(f"ignoring /initialpose: {exc}")
            return
        with self._lock:
            self._initialpose = msg
        self.get_logger().info("initial pose received; used as prior for the next frame")

    # -- localization (worker thread) -------------------------------------------------------------
    def process(self, msg: Segmentation) -> None:
        start = time.monotonic()
        stamp = stamp_to_ns(msg.header.stamp)
        verdict, reason = self._stamps.check(stamp, self.get_clock().now().nanoseconds)
        if verdict == "reset":
            self.get_logger().warning(reason)
            self._reset_time(stamp)
            with self._lock:  # the track is gone: this frame waits for its global prior like any other
                if stamp not in self._priors and self._initialpose is None:
                    self._waiting[stamp] = msg
                    self._expire(stamp)
                    return
        elif verdict == "skip":
            self._skip(f"segmentation {reason}", stamp)
            return
        if msg.model_hash != self.localizer.map.meta.model_hash:
            self._skip(f"segmentation from model {msg.model_hash}, but the map was labelled by "
                       f"model {self.localizer.map.meta.model_hash}: rebuild the map with this "
                       "model (segloc map build) or run the map's model", stamp)
            return
        try:
            camera = camera_info_to_camera(msg.camera_info)
            levels = unpack_levels(msg, camera)
            T_base_cam = self.tf.lookup(self.p["base_frame"], msg.header.frame_id, 0)
        except (InputError, TransformUnavailable) as exc:
            self._skip(str(exc), stamp)
            return
        T_odom_base = None
        if self.p["use_odometry"]:
            try:
                T_odom_base = self.tf.lookup(self.p["odom_frame"], self.p["base_frame"], stamp)
                if not T_odom_base.is_finite():
                    raise TransformUnavailable(f"{self.p['odom_frame']} -> {self.p['base_frame']} is not "
                                               "finite (NaN or inf in the odometry)")
            except TransformUnavailable as exc:
                self.get_logger().warning(f"no odometry at the image stamp ({exc}); refining "
                                          "without it and not publishing map->odom",
                                          throttle_duration_sec=THROTTLE_S)
        prior = self._prior(stamp, T_base_cam, T_odom_base)
        if prior is None:
            self._skip("no pose prior for the frame", stamp)
            return
        T_cam_map, source, image_ids = prior
        fix = self.localizer.localize(levels, T_cam_map, source, image_ids)
        self._stamps.accept(stamp)
        if fix.accepted:
            self._publish_fix(msg, fix, T_base_cam, T_odom_base)
        else:
            self.get_logger().warning(f"fix rejected: {fix.reason}", throttle_duration_sec=THROTTLE_S)
        latency_ms = (self.get_clock().now().nanoseconds - stamp) * 1e-6
        self._publish_status(stamp, fix, latency_ms=latency_ms)
        self.stats.done((time.monotonic() - start) * 1e3)

    def _reset_time(self, stamp: int) -> None:
        """After a jump back in time to `stamp`: forget the track, the odometry anchor, and the TF
        samples, priors and waiting frames of the old timeline: stamped more than the jump
        threshold after `stamp` (the new timeline's, which arrive ahead of this frame's
        segmentation, are kept: dropping them cost the frames right after a replay restart).
        tf2 clears its buffer the same way."""
        old_after = stamp + self._stamps.jump_back_ns
        with self._lock:
            for pending in (self._priors, self._waiting):
                for old in [s for s in pending if s > old_after]:
                    del pending[old]
        self.localizer.reset()
        self._stamps.reset()
        self._last_odom_cam = None
        self._T_map_odom = None
        self.tf.clear(after_ns=old_after)  # edges still on the old timeline

    def _prior(self, stamp: int, T_base_cam: Pose, T_odom_base: Pose | None):
        """(T_cam_map, source, image ids or None) for the frame, or None if there is none."""
        with self._lock:
            initial, self._initialpose = self._initialpose, None
            retrieved = self._priors.pop(stamp, None)
        if initial is not None:
            T_map_base = msg_to_pose(initial.pose.pose)
            return (T_map_base @ T_base_cam).inv(), PriorSource.INITIALPOSE, None
        if retrieved is not None and (retrieved.forced or self.localizer.needs_global_prior()):
            self.localizer.reset()
            T_map_cam = msg_to_pose(retrieved.pose.pose)
            return T_map_cam.inv(), PriorSource.RETRIEVAL, np.array(retrieved.image_ids, np.int64)
        if self.localizer.needs_global_prior():
            return None
        motion = None
        if T_odom_base is not None and self._last_odom_cam is not None:
            motion = self._last_odom_cam.inv() @ (T_odom_base @ T_base_cam)
        return self.localizer.propagate(motion), PriorSource.TRACKING, None

    def _publish_fix(self, msg: Segmentation, fix: Fix, T_base_cam: Pose,
                     T_odom_base: Pose | None) -> None:
        T_map_base = fix.T_cam_world.inv() @ T_base_cam.inv()
        cov_base = change_body_covariance(fix.covariance, T_base_cam.inv())
        out = PoseWithCovarianceStamped()
        out.header.stamp = msg.header.stamp
        out.header.frame_id = self.p["map_frame"]
        out.pose = to_pose_with_covariance(T_map_base, cov_base)
        self.pub_pose.publish(out)
        stamp = stamp_to_ns(msg.header.stamp)
        if T_odom_base is not None:
            self._last_odom_cam = T_odom_base @ T_base_cam
            self._T_map_odom = T_map_base @ T_odom_base.inv()
            self.republish_map_odom()
        elif not self.p["use_odometry"]:
            self.broadcaster.send(pose_to_transform(T_map_base, self.p["map_frame"],
                                                    self.p["base_frame"], stamp))
        else:
            self._last_odom_cam = None

    def republish_map_odom(self) -> None:
        T = self._T_map_odom
        if T is None:
            return
        stamp = self.get_clock().now().nanoseconds + int(self.p["transform_tolerance_s"] * 1e9)
        self.broadcaster.send(pose_to_transform(T, self.p["map_frame"], self.p["odom_frame"], stamp))

    def _publish_status(self, stamp_ns: int | None, fix: Fix | None = None, reason: str = "",
                        latency_ms: float = 0.0) -> None:
        status = LocalizationStatus(state=_STATE_MSG[self.localizer.state],
                                    reason=fix.reason if fix else reason, latency_ms=latency_ms)
        status.header.frame_id = self.p["map_frame"]
        status.header.stamp = ns_to_stamp(stamp_ns if stamp_ns is not None else 0)
        if fix is not None:
            status.consistency = float(fix.consistency)
            status.kappa = float(fix.kappa)
            status.num_points = int(fix.num_points)
            status.position_std_m = float(min(fix.position_std_m, 1e6))
            status.rotation_std_rad = float(min(fix.rotation_std_rad, 1e6))
        self.pub_status.publish(status)

def main() -> int:
    return spin_node(RefinerNode)


if __name__ == "__main__":
    raise SystemExit(main())
