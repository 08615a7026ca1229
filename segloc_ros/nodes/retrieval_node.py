"""retrieval_node: GlobalDescriptor -> segloc_msgs/PosePrior (top-k database images, prior pose).

Only the pose is computed here; the refiner gathers the top-k images' points from its own copy
of the map. Queries run in a worker behind a latest-wins slot, so a slow moment drops a stale
descriptor instead of delaying every later prior.

Retrieval answers on start, while the refiner is not tracking (its status says so), and when
relocalization is requested through the `relocalize` service; while the refiner tracks, frames are
left to its odometry-propagated priors and retrieval skips them (counted in diagnostics).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.localize.retrieval import RetrievalConfig, Retriever, prior_pose
from segloc_core.maps.format import load_map
from segloc_core.paths import map_path
from segloc_msgs.msg import GlobalDescriptor, LocalizationStatus, PosePrior
from segloc_msgs.srv import Relocalize
from segloc_ros.adapters.pose_msgs import to_pose_with_covariance
from segloc_ros.adapters.tf import stamp_to_ns
from segloc_ros.nodes.runtime import ManagedNode, StampGuard, spin_node

STATUS_TIMEOUT_S = 1.0


class RefinerTracking:
    """Whether the refiner tracks, as far as retrieval can tell from the refiner's statuses and the
    descriptors' stamps (so that retrieval leaves tracked frames to odometry-propagated priors).

    A "tracking" status expires after `timeout_s` (a refiner that restarted or went quiet needs
    global priors again). A descriptor stamped more than `jump_back_ns` before the newest one is
    a jump back in time (a second replay, a bag loop, a simulator restart): the refiner starts over
    and needs global priors for the new timeline's first frames, before its status can say so;
    statuses stamped ahead of the new timeline by more than that belong to the old one and are
    ignored."""

    def __init__(self, timeout_s: float = STATUS_TIMEOUT_S, jump_back_ns: int | None = None,
                 clock=time.monotonic) -> None:
        self.timeout_s, self.clock = timeout_s, clock
        self.jump_back_ns = StampGuard().jump_back_ns if jump_back_ns is None else jump_back_ns
        self.tracking, self.status_at, self.last_stamp = False, 0.0, -1

    def on_status(self, stamp_ns: int, tracking: bool) -> None:
        if self.last_stamp >= 0 and stamp_ns > self.last_stamp + self.jump_back_ns:
            return  # a status of the timeline before a jump back in time
        self.tracking, self.status_at = tracking, self.clock()

    def on_descriptor(self, stamp_ns: int) -> bool:
        """Note a descriptor's stamp; True while the refiner tracks (retrieval may skip it)."""
        if self.last_stamp - stamp_ns > self.jump_back_ns:
            self.tracking = False
        self.last_stamp = stamp_ns
        return self.tracking and self.clock() - self.status_at < self.timeout_s


class RetrievalNode(ManagedNode):
    def __init__(self) -> None:
        super().__init__("retrieval_node")
        self.map = self.retriever = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def setup(self) -> None:
        path = Path(self.p["map_path"]) if self.p["map_path"] else map_path()
        self.map = load_map(path)
        self.retriever = Retriever(self.map, RetrievalConfig(top_k=self.p["top_k"],
                                                             prior_mode=self.p["prior_mode"]))
        self.get_logger().info(f"map {path}: {len(self.map.images)} database images, "
                               f"index {self.retriever.index.kind}")
        self.refiner = RefinerTracking()
        self.force = False
        self.skipped_tracking = 0
        self.pub = self.publisher(PosePrior, "prior", 10)

    def connect(self) -> list:
        return [self.create_subscription(GlobalDescriptor, "descriptor", self.on_descriptor, 10),
                self.create_subscription(LocalizationStatus, "status", self.on_status, 10),
                self.create_service(Relocalize, "relocalize", self.on_relocalize)]

    def release(self) -> None:
        self.map = self.retriever = None

    def diagnostics_extra(self) -> dict[str, str]:
        return {"skipped while tracking": str(self.skipped_tracking)}

    # -- retrieval -----------------------------------------------------------------------------------
    def on_status(self, msg: LocalizationStatus) -> None:
        self.refiner.on_status(stamp_to_ns(msg.header.stamp), msg.state == LocalizationStatus.STATE_TRACKING)

    def on_relocalize(self, _request, response):
        self.force = True
        response.accepted, response.message = True, "global relocalization on the next frame"
        self.get_logger().info("relocalization requested")
        return response

    def on_descriptor(self, msg: GlobalDescriptor) -> None:
        self.stats.received += 1
        if self.refiner.on_descriptor(stamp_to_ns(msg.header.stamp)) and \
                not (self.force or self.p["retrieve_while_tracking"]):
            self.skipped_tracking += 1
            return
        self.worker.put(msg)

    def process(self, msg: GlobalDescriptor) -> None:
        start = time.monotonic()
        if msg.model_hash != self.map.meta.model_hash:
            reason = (f"descriptor from model {msg.model_hash} but the map's descriptors from "
                      f"model {self.map.meta.model_hash}; rebuild the map")
            if self.stats.skip(reason):
                self.get_logger().warning(f"skipping {reason}")
            return
        try:
            retrieved = self.retriever.query(np.frombuffer(msg.data, np.float32))
            T_cam_world, covariance = prior_pose(self.map, retrieved, self.retriever.config)
        except InputError as exc:
            if self.stats.skip(str(exc)):
                self.get_logger().warning(f"skipping descriptor: {exc}")
            return
        out = PosePrior(header=msg.header, source=PosePrior.SOURCE_RETRIEVAL, forced=self.force,
                        image_ids=retrieved.image_ids.astype(np.uint32).tolist(),
                        scores=retrieved.scores.astype(np.float32).tolist())
        out.header.frame_id = self.map.meta.frame_id
        out.pose = to_pose_with_covariance(T_cam_world.inv(), covariance)
        self.force = False
        self.pub.publish(out)
        self.stats.done((time.monotonic() - start) * 1e3)


def main() -> int:
    return spin_node(RetrievalNode)


if __name__ == "__main__":
    raise SystemExit(main())
