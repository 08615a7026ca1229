"""`segloc eval --bag`: replay a bag through the real node graph and score what it published.

Starts the graph with the project's launcher (separate processes, as on a robot), records in this
process the refined poses (PR), the retrieval priors (PA) and the refiner's status for each image
stamp, plays the bag with /clock (nodes on sim time), stops the graph, and scores both against the
bag's ground truth (or a TUM/kapture trajectory file) with `segloc_core.eval.trajectory_metrics`.
Latency is wall time from the image's arrival here to the pose's arrival here (both through DDS).
RSS of every node process is sampled at the start and end of the replay.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segloc_core.cli import positive_float
from segloc_core.errors import CheckFailed, InputError
from segloc_core.eval.evaluate import Report
from segloc_core.geometry import Pose

READY_TIMEOUT_S = 180.0


@dataclass
class Recording:
    """What the graph published during one replay, keyed by image stamp (ns)."""

    image_wall_ns: dict[int, int] = field(default_factory=dict)
    pose: dict[int, Pose] = field(default_factory=dict)            # T_map_base (PR)
    pose_wall_ns: dict[int, int] = field(default_factory=dict)
    prior_cam: dict[int, Pose] = field(default_factory=dict)       # T_map_cam (PA)
    status: dict[int, tuple[int, str]] = field(default_factory=dict)  # state, reason
    status_wall_ns: dict[int, int] = field(default_factory=dict)
    rss_start_kb: dict[str, int] = field(default_factory=dict)
    rss_end_kb: dict[str, int] = field(default_factory=dict)
    rss_samples_kb: list[dict[str, int]] = field(default_factory=list)  # every 2 s of the replay
    diagnostics: dict[str, dict[str, str]] = field(default_factory=dict)  # last, per node


def _stamp_of_raw(raw: bytes) -> int:
    """Header stamp of a serialized message that starts with std_msgs/Header (after the 4-byte
    CDR encapsulation header): sec int32, nanosec uint32, little endian in ROS 2."""
    sec, nanosec = struct.unpack_from("<iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


class _Recorder:
    """A node in its own rclpy context that records the graph's outputs on an executor thread."""

    def __init__(self, namespace: str, image_topic: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from segloc_msgs.msg import LocalizationStatus, PosePrior
        from segloc_ros.adapters.pose_msgs import msg_to_pose
        from segloc_ros.adapters.tf import stamp_to_ns

        self.rec = Recording()
        self.context = rclpy.Context()
        self.context.init()
        self.node = Node("segloc_eval_recorder", context=self.context,
                         start_parameter_services=False)
        ns = f"/{namespace}" if namespace else ""
        self.topics = {"pose": f"{ns}/pose", "prior": f"{ns}/prior", "image": image_topic}

        def on_image(raw: bytes) -> None:
            self.rec.image_wall_ns.setdefault(_stamp_of_raw(raw), time.monotonic_ns())

        def on_pose(msg: PoseWithCovarianceStamped) -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            self.rec.pose[stamp] = msg_to_pose(msg.pose.pose)
            self.rec.pose_wall_ns[stamp] = time.monotonic_ns()

        def on_prior(msg: PosePrior) -> None:
            self.rec.prior_cam[stamp_to_ns(msg.header.stamp)] = msg_to_pose(msg.pose.pose)

        def on_status(msg: LocalizationStatus) -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            self.rec.status[stamp] = (int(msg.state), msg.reason)
            self.rec.status_wall_ns.setdefault(stamp, time.monotonic_ns())

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                self.rec.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

        self.node.create_subscription(Image, image_topic, on_image, qos_profile_sensor_data,
                                      raw=True)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        self.node.create_subscription(PoseWithCovarianceStamped, self.topics["pose"], on_pose, 100)
        self.node.create_subscription(PosePrior, self.topics["prior"], on_prior, 100)
        self.node.create_subscription(LocalizationStatus, f"{ns}/status", on_status, 100)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def graph_ready(self) -> bool:
        """Every link of the graph is discovered: camera -> segmentation_node -> (segmentation,
        descriptor) -> retrieval_node -> prior -> refiner_node -> pose."""
        ns = self.topics["pose"].rsplit("/", 1)[0]
        links = {self.topics["image"]: "segmentation_node", f"{ns}/segmentation": "refiner_node",
                 f"{ns}/descriptor": "retrieval_node", self.topics["prior"]: "refiner_node"}
        for topic, listener in links.items():
            if listener not in {i.node_name for i in self.node.get_subscriptions_info_by_topic(topic)}:
                return False
        return self.node.count_publishers(self.topics["pose"]) >= 1

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=5.0)


def _node_rss_kb(launcher_pid: int) -> dict[str, int]:
    """VmRSS of the launcher's child processes (the nodes), by their module name."""
    out = {}
    try:
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    except OSError:
        return out
    for pid in children:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = next((c.decode().rsplit(".", 1)[-1] for c in cmd
                         if c.startswith(b"segloc_ros.")), pid)  # module: the node's name
            rss = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS"))
            out[str(name)] = int(rss.split()[1])
        except (OSError, StopIteration):
            continue
    return out


def _sample_rss(launcher_pid: int, rec: Recording, done: threading.Event) -> None:
    while not done.wait(2.0):
        rec.rss_samples_kb.append(_node_rss_kb(launcher_pid))


def replay(bag: Path, map_path: Path, model_path: Path | None = None, *, rate: float = 1.0,
           namespace: str = "segloc", image_topic: str = "/camera/image_raw",
           launch_args: dict[str, str] | None = None, drain_s: float = 5.0,
           log_path: Path | None = None) -> Recording:
    """Run the graph on `bag` and return what it published (see module docstring)."""
    from segloc_ros.graph import ros_environment
    from segloc_ros.tools.bag import play_bag

    args = {"map": str(map_path), "namespace": namespace, "use_sim_time": "true",
            "image_topic": image_topic, **(launch_args or {})}
    if model_path is not None:
        args["model"] = str(model_path)
    cmd = [sys.executable, "-m", "segloc_ros.cli", "launch", *[f"{k}:={v}" for k, v in args.items()]]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    launcher = subprocess.Popen(cmd, env=ros_environment(), stdout=log, stderr=subprocess.STDOUT)
    recorder = _Recorder(namespace, image_topic)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not recorder.graph_ready():
            if launcher.poll() is not None:
                raise CheckFailed(f"the node graph exited with code {launcher.returncode} before "
                                  f"it was ready (log: {log_path or 'not kept'})")
            if time.monotonic() > deadline:
                raise CheckFailed(f"the node graph was not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        time.sleep(1.0)  # let the last discovery settle so no early frame is lost to matching
        recorder.rec.rss_start_kb = _node_rss_kb(launcher.pid)
        playing = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(launcher.pid, recorder.rec, playing),
                                   daemon=True)
        sampler.start()
        # the segmentation node and this recorder both subscribe to the images
        play_bag(bag, rate=rate, clock=True, delay_s=0.5, wait_for=[image_topic], wait_count=2)
        playing.set()
        sampler.join()
        last_image = max(recorder.rec.image_wall_ns, default=None)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and last_image not in recorder.rec.status:
            time.sleep(0.1)
        recorder.rec.rss_end_kb = _node_rss_kb(launcher.pid)
    finally:
        recorder.close()
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
        if log_path:
            log.close()
    return recorder.rec


def check_inputs(bags: list[Path], map_path: Path, model_path: Path | None, segmenter: str = "model",
                 world: Path | None = None) -> None:
    """Refuse, before any graph starts, what would otherwise run and report 0 % or die in a node:
    an unreadable map, a map labelled by another model (or oracle) than the one to run (every frame
    would be skipped), a bag with no camera images."""
    from rosbags.rosbag2 import Reader

    from segloc_core.maps.format import load_map
    from segloc_core.net.infer import model_files

    m = load_map(map_path)
    if segmenter == "model":
        files = model_files(model_path)
        hashes = {files.hash("torch")} | ({files.hash("onnxruntime")} if files.onnx.is_file() else set())
        running = f"the model to run ({files.onnx})"
    else:
        from segloc_core.net.segmenters import open_segmenter

        hashes = {open_segmenter(segmenter, world=world).model_hash}
        running = f"the segmenter to run ({segmenter})"
    if m.meta.model_hash not in hashes:
        raise InputError(f"map {map_path} was labelled by model {m.meta.model_hash}, {running} is "
                         f"{' / '.join(sorted(hashes))}: every frame would be skipped. Rebuild the map "
                         "with it (segloc map build) or pass the map's model with --model")
    for bag in bags:
        try:
            with Reader(bag) as reader:
                images = [c.topic for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image"]
        except Exception as exc:  # rosbags raises many types for a broken bag
            raise InputError(f"cannot read bag {bag}: {exc}") from exc
        if not images:
            raise InputError(f"bag {bag} has no sensor_msgs/Image topic: nothing to localize")


def read_bag_ground_truth(bag: Path, topic: str = "/ground_truth/pose",
                          required: bool = True) -> tuple[np.ndarray, list[Pose], Pose]:
    """(stamps_ns, T_map_base list) from a PoseStamped topic, and T_base_cam from /tf_static;
    `required=False`: the topic may be missing (ground truth from a file)."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    stamps, poses, T_base_cam = [], [], None
    try:
        with Reader(bag) as reader:
            conns = [c for c in reader.connections if c.topic in (topic, "/tf_static")]
            for conn, _, raw in reader.messages(connections=conns):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                if conn.topic == topic:
                    p, q = msg.pose.position, msg.pose.orientation
                    stamps.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
                    poses.append(Pose.from_quat_xyzw(np.array([q.x, q.y, q.z, q.w]),
                                                     np.array([p.x, p.y, p.z])))
                else:
                    for tr in msg.transforms:
                        if tr.header.frame_id == "base_link":
                            r, t = tr.transform.rotation, tr.transform.translation
                            T_base_cam = Pose.from_quat_xyzw(np.array([r.x, r.y, r.z, r.w]),
                                                             np.array([t.x, t.y, t.z]))
    except Exception as exc:  # rosbags raises many types for a broken bag
        raise InputError(f"cannot read ground truth from bag {bag}: {exc}") from exc
    if not stamps and required:
        raise InputError(f"bag {bag} has no ground-truth topic {topic}; give --ground-truth FILE")
    if T_base_cam is None:
        raise InputError(f"bag {bag} has no base_link -> camera transform on /tf_static")
    return np.array(stamps, np.int64), poses, T_base_cam


def evaluate_bags(bags: list[Path], map_path: Path, model_path: Path | None, out_dir: Path,
                  rate: float = 1.0, ground_truth: Path | None = None,
                  launch_args: dict[str, str] | None = None, segmenter: str = "model",
                  world: Path | None = None) -> Report:
    """Replay each bag through the graph and report PA and PR per bag (condition) and overall;
    `segmenter` oracle[:...] runs the graph on the world's ground-truth labels (the ceiling)."""
    from segloc_core.eval import trajectory_metrics as tm
    from segloc_core.eval.evaluate import PA, PR, write_report
    from segloc_core.maps.format import size_report

    check_inputs(bags, map_path, model_path, segmenter, world)
    if segmenter != "model":
        launch_args = {"segmenter": segmenter, **({"world": str(world)} if world else {}), **(launch_args or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    params = out_dir / "eval_params.yaml"   # score the prior on every frame, not only when lost
    params.write_text("/**/retrieval_node:\n  ros__parameters:\n    retrieve_while_tracking: true\n")
    gt_stamps, gt_poses, labels, est = [], [], [], {PA: {}, PR: {}}
    latency, rss, processed = [], {}, {}
    for bag in bags:
        stamps, poses, T_base_cam = read_bag_ground_truth(bag, required=ground_truth is None)
        if ground_truth is not None:
            is_kapture = ground_truth.read_text(errors="replace").startswith("# kapture")
            gt = tm.read_kapture_trajectory(ground_truth) if is_kapture else tm.read_tum(ground_truth)
            stamps, poses = gt.stamps_ns, gt.poses()
        rec = replay(bag, map_path, model_path, rate=rate,
                     launch_args={"params_file": str(params), **(launch_args or {})},
                     log_path=out_dir / f"{bag.name}.graph.log")
        gt_stamps += list(stamps)
        gt_poses += list(poses)
        labels += [bag.name] * len(stamps)
        T_cam_base = T_base_cam.inv()
        est[PA].update({s: T @ T_cam_base for s, T in rec.prior_cam.items()})
        est[PR].update(rec.pose)
        latency += [(rec.image_wall_ns[s], rec.pose_wall_ns[s]) for s in rec.pose
                    if s in rec.image_wall_ns]
        rss[bag.name] = {"start_kb": rec.rss_start_kb, "end_kb": rec.rss_end_kb}
        processed[bag.name] = len(rec.status)

    def trajectory(poses: dict) -> tm.Trajectory:
        keys = sorted(poses)
        return tm.Trajectory.from_poses(keys, [poses[k] for k in keys])

    return write_report(out_dir, tm.Trajectory.from_poses(gt_stamps, gt_poses),
                        {name: trajectory(p) for name, p in est.items()}, conditions=labels,
                        latency_ns={PR: np.array(latency, np.int64).reshape(-1, 2)},
                        extra={"map": str(map_path), "bytes_per_point": size_report(map_path).bytes_per_point,
                               "bags": [str(b) for b in bags], "rate": rate, "node_rss_kb": rss,
                               "frames_processed": processed,
                               "poses": "base_link in map (T_map_base)"})


def _run(args) -> int:
    from segloc_core.eval.evaluate import run_queries
    from segloc_core.paths import home, map_path

    if not args.bag:
        return run_queries(args)
    out = args.out or home() / "eval" / "bag"
    report = evaluate_bags(args.bag, args.map or map_path(), args.model, out, args.rate,
                           args.ground_truth, segmenter=args.segmenter, world=args.world)
    print(report.markdown)
    print(f"report: {out}")
    return 0


def configure_cli(parser) -> None:
    """`segloc eval` with ROS: the library's options plus --bag."""
    from segloc_core.eval.evaluate import configure_cli as configure_core

    configure_core(parser)
    parser.add_argument("--bag", type=Path, nargs="+", default=None,
                        help="rosbag2 folders to replay through the node graph (one per condition)")
    parser.add_argument("--ground-truth", type=Path, default=None,
                        help="TUM or kapture trajectory of base_link (default: the bag's "
                             "/ground_truth/pose topic)")
    parser.add_argument("--rate", type=positive_float, default=1.0, help="playback rate")
    parser.set_defaults(func=_run)
