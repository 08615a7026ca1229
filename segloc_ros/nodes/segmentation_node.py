"""segmentation_node: camera Image + CameraInfo -> segloc_msgs/Segmentation and GlobalDescriptor.

Subscribes with sensor-data QoS and pairs each image with the CameraInfo of the same stamp (within
`sync_tolerance_s`). Inference runs in a worker thread behind a latest-wins slot: when the network
is busy, an older waiting frame is dropped (counted), never queued. Bad frames (unknown encoding,
sizes that do not add up, no CameraInfo, stamps going backwards) are skipped with a throttled
warning that says why, and the node keeps running.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from segloc_core.errors import InputError
from segloc_core.net.segmenters import open_segmenter
from segloc_msgs.msg import GlobalDescriptor, Segmentation
from segloc_ros.adapters.image_conversion import camera_info_to_camera, image_to_rgb8
from segloc_ros.adapters.segmentation_msg import pack_segmentation
from segloc_ros.adapters.tf import stamp_to_ns
from segloc_ros.nodes.runtime import ManagedNode, StampGuard, spin_node

PAIRING_TIMEOUT_S = 0.5  # how long an image may wait for its CameraInfo


@dataclass(frozen=True)
class _Frame:
    image: Image
    info: CameraInfo
    received_ns: int


class SegmentationNode(ManagedNode):
    def __init__(self) -> None:
        super().__init__("segmentation_node")
        self.segmenter = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def setup(self) -> None:
        self.segmenter = open_segmenter(self.p["segmenter"], self.p["model_path"] or None,
                                        self.p["backend"], self.p["world_path"] or None, self.p["threads"])
        self.get_logger().info(f"model {self.segmenter.model_hash} (K={self.segmenter.K}) on "
                               f"{self.segmenter.backend}")
        self._infos: deque[CameraInfo] = deque(maxlen=30)
        self._pending: dict[int, Image] = {}   # images waiting for their CameraInfo, by stamp
        self._stamps = StampGuard()
        self.pub_seg = self.publisher(Segmentation, "segmentation", 2)
        self.pub_desc = self.publisher(GlobalDescriptor, "descriptor", 10)

    def connect(self) -> list:
        return [self.create_subscription(Image, self.p["image_topic"], self.on_image,
                                         qos_profile_sensor_data),
                self.create_subscription(CameraInfo, self.p["camera_info_topic"], self.on_info,
                                         qos_profile_sensor_data)]

    def release(self) -> None:
        self.segmenter = None

    # -- pairing (executor thread) ----------------------------------------------------------------
    def _skip(self, reason: str) -> None:
        if self.stats.skip(reason):
            self.get_logger().warning(f"skipping frame: {reason}")

    def _match(self, image: Image) -> CameraInfo | None:
        stamp = stamp_to_ns(image.header.stamp)
        tolerance = int(self.p["sync_tolerance_s"] * 1e9)
        best = min(self._infos, key=lambda i: abs(stamp_to_ns(i.header.stamp) - stamp), default=None)
        if best is not None and abs(stamp_to_ns(best.header.stamp) - stamp) <= tolerance:
            return best
        return None

    def on_image(self, image: Image) -> None:
        self.stats.received += 1
        stamp = stamp_to_ns(image.header.stamp)
        verdict, reason = self._stamps.check(stamp, self.get_clock().now().nanoseconds)
        if verdict == "reset":
            self.get_logger().warning(reason)
            self._stamps.reset()
            self._pending.clear()  # CameraInfos are matched by stamp: old ones simply never match
        elif verdict == "skip" or stamp in self._pending:
            self._skip(f"image {reason or f'stamp {stamp * 1e-9:.3f} s is already waiting'}")
            return
        self._pending[stamp] = image   # its CameraInfo may still be on the way
        self._pair(stamp)

    def on_info(self, info: CameraInfo) -> None:
        self._infos.append(info)
        self._pair(stamp_to_ns(info.header.stamp))

    def _pair(self, newest_ns: int) -> None:
        """Submit the newest waiting image that has its CameraInfo; older waiting images are
        superseded (latest wins); images left without CameraInfo for PAIRING_TIMEOUT_S are
        reported and dropped."""
        matched = [(s, info) for s, image in self._pending.items()
                   if (info := self._match(image)) is not None]
        if matched:
            stamp, info = matched[-1]
            image = self._pending[stamp]
            superseded = [s for s in self._pending if s < stamp]
            for old in superseded + [stamp]:
                del self._pending[old]
            self.worker.count_dropped(len(superseded))
            self._stamps.accept(stamp)
            self.worker.put(_Frame(image, info, time.monotonic_ns()))
        limit = newest_ns - int(PAIRING_TIMEOUT_S * 1e9)
        for old in [s for s in self._pending if s < limit]:
            del self._pending[old]
            self._skip(f"no CameraInfo on {self.p['camera_info_topic']} within "
                       f"{self.p['sync_tolerance_s']} s of the image stamp "
                       f"(waited {PAIRING_TIMEOUT_S} s)")

    # -- inference (worker thread) ----------------------------------------------------------------
    def process(self, frame: _Frame) -> None:
        try:
            rgb = image_to_rgb8(frame.image)
            camera = camera_info_to_camera(frame.info)
            if (camera.width, camera.height) != (rgb.shape[1], rgb.shape[0]):
                raise InputError(f"CameraInfo is {camera.width}x{camera.height} but the image is "
                                 f"{rgb.shape[1]}x{rgb.shape[0]}")
            # the oracle finds its ground truth by the stamp (a world bag's frame stamps)
            result = self.segmenter.segment(rgb, frame=stamp_to_ns(frame.image.header.stamp))
        except InputError as exc:
            self._skip(str(exc))
            return
        seg, desc = pack_segmentation(frame.image.header, frame.info, result,
                                      self.p["map_encoding"], self.p["top_n"])
        self.pub_desc.publish(desc)
        self.pub_seg.publish(seg)
        self.stats.done((time.monotonic_ns() - frame.received_ns) * 1e-6)


def main() -> int:
    return spin_node(SegmentationNode)


if __name__ == "__main__":
    raise SystemExit(main())
