"""Write one traversal of a rendered world as a rosbag2 (MCAP), with the `rosbags` library (no rclpy).

Topics (frame ids: map, odom, base_link, camera_optical_frame):

- `/camera/image_raw`   sensor_msgs/msg/Image, rgb8, frame `camera_optical_frame`
- `/camera/camera_info` sensor_msgs/msg/CameraInfo, same stamps; K and P in the OpenCV/ROS pixel
  convention (top-left pixel centre at (0, 0), i.e. cx = cx_colmap - 0.5), plumb_bob, no distortion
- `/tf`                 tf2_msgs/msg/TFMessage odom -> base_link from the noisy wheel odometry,
  at the odometry rate (50 Hz by default)
- `/tf_static`          tf2_msgs/msg/TFMessage base_link -> camera_optical_frame, once at the start,
  offered as reliable + transient_local (keep_last 1), like a static broadcaster
- `/ground_truth/pose`  geometry_msgs/msg/PoseStamped: the ground-truth pose of **base_link** in
  `map` (= the world frame), at every camera stamp

Bag time (log time) equals each message's header stamp.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from segloc_core.errors import InputError, require
from segloc_core.geometry import Pose
from segloc_core.progress import progress_bar

MAP_FRAME, ODOM_FRAME, BASE_FRAME, CAMERA_FRAME = "map", "odom", "base_link", "camera_optical_frame"
TOPIC_IMAGE, TOPIC_INFO, TOPIC_TF, TOPIC_TF_STATIC, TOPIC_GT = (
    "/camera/image_raw", "/camera/camera_info", "/tf", "/tf_static", "/ground_truth/pose")


def _typestore():
    stores = require("rosbags.typesys")
    return stores.get_typestore(stores.Stores.ROS2_KILTED)


def write_world_bag(ds, condition: str, out_path: Path | str, max_frames: int | None = None,
                    overwrite: bool = False, progress: bool = False) -> Path:
    """Write `condition`'s traversal of the world dataset `ds` to a rosbag2 MCAP folder."""
    rosbag2 = require("rosbags.rosbag2")
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    out = Path(out_path)
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = ds.frames(condition)[:max_frames]
    if not frames:
        raise InputError(f"condition {condition!r} of {ds.root} has no frames")
    odo = ds.odometry(condition)
    t_end = frames[-1].stamp_ns
    keep = odo.stamps_ns <= t_end
    ts = _typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image, CameraInfo = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"]
    ROI = T["sensor_msgs/msg/RegionOfInterest"]
    TFMessage, TransformStamped = T["tf2_msgs/msg/TFMessage"], T["geometry_msgs/msg/TransformStamped"]
    Transform, Vector3 = T["geometry_msgs/msg/Transform"], T["geometry_msgs/msg/Vector3"]
    Quaternion, Point = T["geometry_msgs/msg/Quaternion"], T["geometry_msgs/msg/Point"]
    PoseMsg, PoseStamped = T["geometry_msgs/msg/Pose"], T["geometry_msgs/msg/PoseStamped"]

    def header(stamp_ns: int, frame: str):
        return Header(stamp=Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame)

    def quat(p: Pose):
        x, y, z, w = p.quat_xyzw()
        return Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))

    def tf(stamp_ns: int, parent: str, child: str, p: Pose):
        return TransformStamped(header=header(stamp_ns, parent), child_frame_id=child,
                                transform=Transform(translation=Vector3(x=float(p.t[0]), y=float(p.t[1]), z=float(p.t[2])),
                                                    rotation=quat(p)))

    zero = QosTime(sec=0, nsec=0)
    latched = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                  zero, zero, QosLiveliness.AUTOMATIC, zero, False)
    cam = frames[0].camera
    K = cam.to_opencv_K()
    P = np.zeros(12)
    P[[0, 2, 5, 6, 10]] = [K[0, 0], K[0, 2], K[1, 1], K[1, 2], 1.0]
    T_cam_base = ds.T_base_cam.inv()
    with rosbag2.Writer(out, version=9, storage_plugin=rosbag2.StoragePlugin.MCAP) as w:
        c_img = w.add_connection(TOPIC_IMAGE, Image.__msgtype__, typestore=ts)
        c_info = w.add_connection(TOPIC_INFO, CameraInfo.__msgtype__, typestore=ts)
        c_tf = w.add_connection(TOPIC_TF, TFMessage.__msgtype__, typestore=ts)
        c_static = w.add_connection(TOPIC_TF_STATIC, TFMessage.__msgtype__, typestore=ts,
                                    offered_qos_profiles=[latched])
        c_gt = w.add_connection(TOPIC_GT, PoseStamped.__msgtype__, typestore=ts)

        def put(conn, stamp_ns: int, msg) -> None:
            w.write(conn, int(stamp_ns), ts.serialize_cdr(msg, msg.__msgtype__))

        t0 = int(min(frames[0].stamp_ns, odo.stamps_ns[0]))
        put(c_static, t0, TFMessage(transforms=[tf(t0, BASE_FRAME, CAMERA_FRAME, ds.T_base_cam)]))
        # messages in time order: odometry TF interleaved with camera frames
        events = [(int(s), 0, i) for i, s in enumerate(odo.stamps_ns[keep])]
        events += [(f.stamp_ns, 1, i) for i, f in enumerate(frames)]
        events.sort()
        for stamp, kind, i in progress_bar(events, desc=f"bag {condition}", unit="msg", enabled=progress):
            if kind == 0:
                put(c_tf, stamp, TFMessage(transforms=[tf(stamp, ODOM_FRAME, BASE_FRAME,
                                                          Pose.from_matrix(odo.T_odom_base[i]))]))
                continue
            rec = frames[i]
            rgb = ds.rgb(rec)
            put(c_img, stamp, Image(header=header(stamp, CAMERA_FRAME), height=rgb.shape[0], width=rgb.shape[1],
                                    encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
                                    data=np.ascontiguousarray(rgb).reshape(-1)))
            put(c_info, stamp, CameraInfo(header=header(stamp, CAMERA_FRAME), height=cam.height, width=cam.width,
                                          distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(-1),
                                          r=np.eye(3).reshape(-1), p=P, binning_x=0, binning_y=0,
                                          roi=ROI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)))
            T_world_base = rec.T_world_cam @ T_cam_base
            put(c_gt, stamp, PoseStamped(header=header(stamp, MAP_FRAME), pose=PoseMsg(
                position=Point(x=float(T_world_base.t[0]), y=float(T_world_base.t[1]), z=float(T_world_base.t[2])),
                orientation=quat(T_world_base))))
    return out
