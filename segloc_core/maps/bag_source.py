"""A mapping run recorded as a rosbag2, as posed images for `segloc map build --source bag BAG`.

What a robot records: camera images (one sensor_msgs/Image topic, each with the CameraInfo of the
same stamp) and, from a SLAM or RTK system, the robot's pose in the map frame (a
geometry_msgs/PoseStamped or nav_msgs/Odometry topic), with the camera's mounting on /tf_static.
Each kept image gets the pose interpolated at its stamp (linear in position, spherical in rotation,
from the two poses around it; an image more than `max_gap_s` from both is skipped and counted)
composed with the static chain from the body frame to the image's frame_id. Without a pose topic the
images alone go through structure from motion (the map then has no metric scale).

Read with rosbags (no ROS runtime needed); images are written as PNG under `out_dir` (the map build
reads them back to label the points).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose

POSE_TYPES = ("geometry_msgs/msg/PoseStamped", "nav_msgs/msg/Odometry")


@dataclass(frozen=True)
class BagImages:
    image_dir: Path
    names: list[str]
    cameras: list[Camera]
    poses: list[Pose] | None  # T_cam_world per image, None without a pose topic
    skipped: int  # images without a pose close enough


def _stamp(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pose_of(p) -> Pose:
    q, t = p.orientation, p.position
    return Pose.from_quat_xyzw(np.array([q.x, q.y, q.z, q.w]), np.array([t.x, t.y, t.z]))


def _camera(info) -> Camera:
    K = np.asarray(info.k, np.float64).reshape(3, 3)
    d = np.asarray(info.d, np.float64)
    return Camera.from_opencv_K(K, int(info.width), int(info.height), d[:4] if d.size else None)


def static_chain(edges: dict[str, tuple[str, Pose]], base: str, frame: str) -> Pose:
    """T_base_frame from static edges {child: (parent, T_parent_child)}, walking up from `frame`."""
    T, at = Pose.identity(), frame
    for _ in range(len(edges) + 1):
        if at == base:
            return T
        if at not in edges:
            break
        parent, T_parent_child = edges[at]
        T, at = T_parent_child @ T, parent
    raise InputError(f"no /tf_static chain from {base!r} to the camera frame {frame!r} "
                     f"(static frames: {sorted(edges)})")


def interpolate(stamps: np.ndarray, poses: list[Pose], t: int, max_gap_ns: int) -> Pose | None:
    """The pose at time t from the two around it (or the nearest within max_gap_ns at the ends)."""
    from scipy.spatial.transform import Rotation, Slerp

    j = int(np.searchsorted(stamps, t))
    if j < len(stamps) and stamps[j] == t:
        return poses[j]
    if 0 < j < len(stamps) and min(t - stamps[j - 1], stamps[j] - t) <= max_gap_ns:
        a, b = poses[j - 1], poses[j]
        w = (t - stamps[j - 1]) / (stamps[j] - stamps[j - 1])
        R = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([a.R, b.R])))([w]).as_matrix()[0]
        return Pose(R, (1 - w) * a.t + w * b.t)
    near = [k for k in (j - 1, j) if 0 <= k < len(stamps) and abs(int(stamps[k]) - t) <= max_gap_ns]
    return poses[near[0]] if near else None


def extract_bag(bag: Path, out_dir: Path, image_topic: str | None = None, pose_topic: str | None = None,
                base_frame: str = "base_link", stride: int = 1, max_gap_s: float = 0.2) -> BagImages:
    """Posed (or unposed) images of a mapping bag (see the module docstring)."""
    import cv2
    from rosbags.image import message_to_cvimage
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    reader = Reader(bag)
    try:
        reader.open()
    except Exception as exc:  # rosbags raises many types for a broken bag
        raise InputError(f"cannot read bag {bag}: {exc}") from exc
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        images = [t for t, m in topics.items() if m == "sensor_msgs/msg/Image"]
        image_topic = image_topic or (images[0] if len(images) == 1 else None)
        if image_topic not in images:
            raise InputError(f"bag {bag}: give --image-topic, one of {images}" if images else
                             f"bag {bag} has no sensor_msgs/Image topic")
        info_topic = image_topic.rsplit("/", 1)[0] + "/camera_info"
        if topics.get(info_topic) != "sensor_msgs/msg/CameraInfo":
            raise InputError(f"bag {bag}: no CameraInfo on {info_topic} beside {image_topic}")
        if pose_topic is None and topics.get("/ground_truth/pose") in POSE_TYPES:
            pose_topic = "/ground_truth/pose"
        if pose_topic is not None and topics.get(pose_topic) not in POSE_TYPES:
            raise InputError(f"bag {bag}: pose topic {pose_topic} must be one of {POSE_TYPES}, "
                             f"found {topics.get(pose_topic)}")
        wanted = {image_topic, info_topic, "/tf_static", *([pose_topic] if pose_topic else [])}
        infos, frames, edges, pose_rows, pending = {}, {}, {}, [], []
        out_dir.mkdir(parents=True, exist_ok=True)
        count = 0
        for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            msg = store.deserialize_cdr(raw, conn.msgtype)
            if conn.topic == info_topic:
                infos[_stamp(msg.header)] = msg
            elif conn.topic == "/tf_static":
                for tr in msg.transforms:
                    r, t = tr.transform.rotation, tr.transform.translation
                    edges[tr.child_frame_id] = (tr.header.frame_id, Pose.from_quat_xyzw(
                        np.array([r.x, r.y, r.z, r.w]), np.array([t.x, t.y, t.z])))
            elif conn.topic == pose_topic:
                p = msg.pose.pose if conn.msgtype == "nav_msgs/msg/Odometry" else msg.pose
                pose_rows.append((_stamp(msg.header), _pose_of(p)))
            else:
                count += 1
                if (count - 1) % stride:
                    continue
                stamp = _stamp(msg.header)
                name = f"{stamp}.png"
                cv2.imwrite(str(out_dir / name), message_to_cvimage(msg, "bgr8"))
                frames[stamp] = msg.header.frame_id
                pending.append((stamp, name))
    finally:
        reader.close()
    names, cameras, stamps = [], [], []
    for stamp, name in pending:
        info = infos.get(stamp)
        if info is None:
            continue
        names.append(name)
        cameras.append(_camera(info))
        stamps.append(stamp)
    if len(names) < 2:
        raise InputError(f"bag {bag}: fewer than 2 images of {image_topic} with a CameraInfo of the same stamp")
    if pose_topic is None:
        return BagImages(out_dir, names, cameras, None, 0)
    pose_rows.sort(key=lambda r: r[0])
    p_stamps = np.array([r[0] for r in pose_rows], np.int64)
    p_poses = [r[1] for r in pose_rows]
    keep_names, keep_cams, poses = [], [], []
    for name, cam, stamp in zip(names, cameras, stamps):
        T_map_base = interpolate(p_stamps, p_poses, stamp, int(max_gap_s * 1e9))
        if T_map_base is None:
            continue
        T_base_cam = static_chain(edges, base_frame, frames[stamp])
        keep_names.append(name)
        keep_cams.append(cam)
        poses.append((T_map_base @ T_base_cam).inv())
    if len(keep_names) < 2:
        raise InputError(f"bag {bag}: fewer than 2 images within {max_gap_s} s of a pose on {pose_topic}")
    return BagImages(out_dir, keep_names, keep_cams, poses, len(names) - len(keep_names))
