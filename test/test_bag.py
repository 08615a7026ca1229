"""Bag play and record on a real rclpy graph: bags written with rosbags (MCAP, sqlite3, and the
metadata Humble's `ros2 bag record` writes) are played into subscribers that check counts, order,
types, stamps, QoS (late /tf_static), rate and /clock; recording round-trips through rosbags and
the independent mcap_ros2 reader; damaged bags give InputError or skipped counts."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from segloc_core.errors import InputError
from segloc_ros.graph import ros_environment
from segloc_ros.tools.bag import message_class, play_bag, record_bag
from segloc_ros.tools.bag_storage import typestore_for

STORE = get_typestore(Stores.ROS2_KILTED)
T0_NS = 1_700_000_000_000_000_000
DURATION_S = 1.0
IMAGE_HZ, TF_HZ = 20, 50
N_IMAGES, N_TF = int(DURATION_S * IMAGE_HZ), int(DURATION_S * TF_HZ)
N_STATIC = 2  # two static broadcasters, one message each


def _qos(durability: QosDurability, depth: int = 10) -> Qos:
    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE, durability, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


def _header(ns: int, frame: str):
    Time, Header = STORE.types["builtin_interfaces/msg/Time"], STORE.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)


def _tf(ns: int, parent: str, child: str, x: float):
    T = STORE.types
    transform = T["geometry_msgs/msg/Transform"](
        translation=T["geometry_msgs/msg/Vector3"](x=x, y=0.0, z=0.0),
        rotation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
    stamped = T["geometry_msgs/msg/TransformStamped"](header=_header(ns, parent),
                                                      child_frame_id=child, transform=transform)
    return T["tf2_msgs/msg/TFMessage"](transforms=[stamped])


def _image(ns: int, i: int, width: int = 8, height: int = 6):
    data = np.full(height * width * 3, i % 256, dtype=np.uint8)
    return STORE.types["sensor_msgs/msg/Image"](
        header=_header(ns, "camera"), height=height, width=width, encoding="rgb8",
        is_bigendian=0, step=width * 3, data=data)


def _camera_info(ns: int):
    T = STORE.types
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                do_rectify=False)
    return T["sensor_msgs/msg/CameraInfo"](
        header=_header(ns, "camera"), height=6, width=8, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.array([4.0, 0, 4, 0, 4, 3, 0, 0, 1]), r=np.eye(3).ravel(),
        p=np.zeros(12), binning_x=0, binning_y=0, roi=roi)


def write_bag(path: Path, storage: StoragePlugin = StoragePlugin.MCAP, version: int = 9,
              image_size: tuple[int, int] = (8, 6)) -> Path:
    """1 s drive: 20 Hz images + camera info, 50 Hz /tf, 2 latched /tf_static messages at t=0."""
    with Writer(path, version=version, storage_plugin=storage) as writer:
        conns = {
            "/camera/image_raw": writer.add_connection(
                "/camera/image_raw", "sensor_msgs/msg/Image", typestore=STORE,
                offered_qos_profiles=[_qos(QosDurability.VOLATILE)]),
            "/camera/camera_info": writer.add_connection(
                "/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=STORE,
                offered_qos_profiles=[_qos(QosDurability.VOLATILE)]),
            "/tf": writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=STORE,
                                         offered_qos_profiles=[_qos(QosDurability.VOLATILE, 100)]),
            "/tf_static": writer.add_connection(
                "/tf_static", "tf2_msgs/msg/TFMessage", typestore=STORE,
                offered_qos_profiles=[_qos(QosDurability.TRANSIENT_LOCAL, 1)] * 2),
        }
        msgs = [(T0_NS, "/tf_static", _tf(T0_NS, "base_link", "camera", 0.5)),
                (T0_NS + 1000, "/tf_static", _tf(T0_NS, "base_link", "imu", 0.1))]
        for i in range(N_TF):
            ns = T0_NS + 5_000_000 + i * 10**9 // TF_HZ
            msgs.append((ns, "/tf", _tf(ns, "odom", "base_link", float(i))))
        for i in range(N_IMAGES):
            ns = T0_NS + 10_000_000 + i * 10**9 // IMAGE_HZ
            msgs.append((ns, "/camera/image_raw", _image(ns, i, *image_size)))
            msgs.append((ns + 1000, "/camera/camera_info", _camera_info(ns)))
        for ns, topic, msg in sorted(msgs, key=lambda m: m[0]):
            msgtype = conns[topic].msgtype
            writer.write(conns[topic], ns, STORE.serialize_cdr(msg, msgtype))
    return path


class Listener:
    """Subscribers on a private context, spun on their own thread; records what arrives."""

    def __init__(self, topics: dict[str, str], latched: tuple[str, ...] = ()) -> None:
        self.context = rclpy.Context()
        self.context.init()
        self.node = Node("bag_test_listener", context=self.context)
        self.received: dict[str, list] = {t: [] for t in topics}
        self.arrival: dict[str, list[float]] = {t: [] for t in topics}
        self.lock = threading.Lock()
        for topic, msgtype in topics.items():
            self.subscribe(topic, msgtype, topic in latched)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def subscribe(self, topic: str, msgtype: str, latched: bool = False, key: str | None = None):
        key = key or topic
        self.received.setdefault(key, [])
        self.arrival.setdefault(key, [])
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                         else DurabilityPolicy.VOLATILE)

        def on_msg(msg, key=key):
            with self.lock:
                self.received[key].append(msg)
                self.arrival[key].append(time.perf_counter())

        return self.node.create_subscription(message_class(msgtype), topic, on_msg, qos)

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                return

    def wait_for(self, key: str, count: int, timeout_s: float = 5.0) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.received[key]) < count:
            time.sleep(0.01)
        return self.received[key]

    def close(self) -> None:
        self.context.try_shutdown()
        self.thread.join(5)
        self.node.destroy_node()


TOPICS = {"/camera/image_raw": "sensor_msgs/msg/Image",
          "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
          "/tf": "tf2_msgs/msg/TFMessage", "/tf_static": "tf2_msgs/msg/TFMessage"}


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _humble_metadata(bag: Path) -> None:
    """Rewrite metadata.yaml as Humble's rosbag2 writes it: version 5, QoS as a YAML string, no
    type hashes or ros_distro."""
    import yaml

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    info = meta["rosbag2_bagfile_information"]
    info["version"] = 5
    info.pop("ros_distro", None)
    for entry in info["topics_with_message_count"]:
        topic = entry["topic_metadata"]
        topic.pop("type_description_hash", None)
        offered = topic["offered_qos_profiles"]
        if not isinstance(offered, str):
            topic["offered_qos_profiles"] = yaml.safe_dump(offered)
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize("storage, version", [(StoragePlugin.MCAP, 9), (StoragePlugin.SQLITE3, 8),
                                              (StoragePlugin.SQLITE3, 5)])
def test_play_delivers_every_message_in_order_with_stamps_and_latched_tf_static(
        tmp_path, storage, version):
    bag = write_bag(tmp_path / "bag", storage, 8 if version == 5 else version)
    if version == 5:
        _humble_metadata(bag)
    listener = Listener({t: m for t, m in TOPICS.items() if t != "/tf_static"})
    result = {}
    player = threading.Thread(target=lambda: result.update(stats=play_bag(
        bag, wait_for=["/camera/image_raw", "/camera/camera_info", "/tf"], delay_s=0.2)))
    try:
        player.start()
        # join /tf_static late: after the static messages went out, while the bag still plays
        listener.wait_for("/tf", 10)
        listener.subscribe("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        player.join(20)
        statics = listener.wait_for("/tf_static", N_STATIC, 3.0)
        images = listener.wait_for("/camera/image_raw", N_IMAGES)
        infos = listener.wait_for("/camera/camera_info", N_IMAGES)
        tfs = listener.wait_for("/tf", N_TF)
    finally:
        listener.close()
    stats = result["stats"]
    assert stats.published == {"/camera/image_raw": N_IMAGES, "/camera/camera_info": N_IMAGES,
                               "/tf": N_TF, "/tf_static": N_STATIC}
    assert stats.skipped == 0 and not stats.read_errors and not stats.stopped
    assert len(images) == len(infos) == N_IMAGES and len(tfs) == N_TF
    image_stamps = [_stamp(m) for m in images]
    assert image_stamps == [T0_NS + 10_000_000 + i * 10**9 // IMAGE_HZ for i in range(N_IMAGES)]
    assert [int(m.data[0]) for m in images] == list(range(N_IMAGES))
    assert images[3].encoding == "rgb8" and (images[3].width, images[3].height) == (8, 6)
    assert infos[0].k[0] == 4.0 and infos[0].distortion_model == "plumb_bob"
    assert [m.transforms[0].transform.translation.x for m in tfs] == [float(i) for i in range(N_TF)]
    assert sorted(m.transforms[0].child_frame_id for m in statics) == ["camera", "imu"]
    # pace: the bag spans ~0.96 s of messages; playback honours it
    assert stats.wall_s == pytest.approx(stats.bag_s, abs=0.15)
    # typically < 1 ms; the bound only catches gross scheduling bugs on a loaded shared machine
    assert stats.timing.count == stats.total and stats.timing.mean_abs_ms < 20.0


def test_rate_two_halves_wall_time_and_clock_carries_bag_time(tmp_path):
    bag = write_bag(tmp_path / "bag")
    listener = Listener({"/tf": "tf2_msgs/msg/TFMessage", "/clock": "rosgraph_msgs/msg/Clock"})
    try:
        stats = play_bag(bag, rate=2.0, clock=True, clock_hz=100.0, wait_for=["/tf", "/clock"],
                         topics=["/tf"], remap=["/tf:=/tf"])
        tfs = listener.wait_for("/tf", N_TF)
        time.sleep(0.2)
        clocks = list(listener.received["/clock"])
        arrivals = listener.arrival["/tf"]
    finally:
        listener.close()
    assert stats.published == {"/tf": N_TF}
    bag_span = (N_TF - 1) / TF_HZ
    assert stats.wall_s == pytest.approx(bag_span / 2, abs=0.05)
    assert arrivals[-1] - arrivals[0] == pytest.approx(bag_span / 2, abs=0.1)
    assert len(tfs) == N_TF
    # ~100 Hz of wall time over 0.49 s; clock values are bag time and never go back
    assert 35 <= stats.clock_messages <= 60 and len(clocks) >= 30
    clock_ns = [c.clock.sec * 10**9 + c.clock.nanosec for c in clocks]
    assert clock_ns == sorted(clock_ns)
    assert T0_NS <= clock_ns[0] and clock_ns[-1] <= T0_NS + 10**9
    span = (clock_ns[-1] - clock_ns[0]) * 1e-9
    assert span == pytest.approx(bag_span, abs=0.1)  # bag time runs twice as fast as the wall


def test_stop_event_ends_looping_playback(tmp_path):
    bag = write_bag(tmp_path / "bag")
    stop = threading.Event()
    threading.Timer(1.6, stop.set).start()
    stats = play_bag(bag, loop=True, rate=4.0, topics=["/tf"], stop_event=stop)
    assert stats.stopped and stats.passes >= 4
    assert stats.published["/tf"] >= 4 * N_TF


def test_start_offset_skips_the_beginning_without_counting_it_as_damage(tmp_path):
    bag = write_bag(tmp_path / "bag")
    # a bare .mcap file (no metadata.yaml) plays too
    stats = play_bag(next(bag.glob("*.mcap")), rate=4.0, topics=["/tf"], start_offset_s=0.5)
    # /tf stamps are T0 + 5 ms + i * 20 ms: the first at or after T0 + 0.5 s is i = 25
    assert stats.published == {"/tf": N_TF - 25} and stats.skipped == 0
    assert stats.bag_s == pytest.approx((N_TF - 1 - 25) / TF_HZ)


def test_record_round_trip_matches_bag_and_independent_reader(tmp_path):
    from mcap_ros2.reader import read_ros2_messages

    bag = write_bag(tmp_path / "bag")
    out = tmp_path / "recorded"
    stop = threading.Event()
    result = {}
    recorder = threading.Thread(target=lambda: result.update(stats=record_bag(
        out, ["/camera/image_raw", "/tf", "/tf_static"], stop_event=stop)))
    context = rclpy.Context()
    context.init()
    node = Node("bag_test_announcer", context=context)
    try:
        # the recorder waits for publishers: the player's node exists before its first message
        recorder.start()
        stats = play_bag(bag, delay_s=1.0, node=node)
        time.sleep(0.5)
        stop.set()
        recorder.join(10)
    finally:
        node.destroy_node()
        context.try_shutdown()
    rec = result["stats"]
    assert rec.recorded == {"/camera/image_raw": N_IMAGES, "/tf": N_TF, "/tf_static": N_STATIC}
    assert rec.types["/tf_static"] == "tf2_msgs/msg/TFMessage"
    with Reader(bag) as original, Reader(out) as copy:
        topics = ["/camera/image_raw", "/tf", "/tf_static"]
        want = [(c.topic, bytes(raw)) for c, _, raw in original.messages(
            [c for c in original.connections if c.topic in topics])]
        got = [(c.topic, bytes(raw), ts) for c, ts, raw in copy.messages()]
        assert sorted((t, r) for t, r, _ in got) == sorted(want)
        by_topic = {c.topic: c for c in copy.connections}
        assert by_topic["/tf_static"].ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"
        assert by_topic["/tf"].digest == STORE.hash_rihs01("tf2_msgs/msg/TFMessage")
        # receive stamps reproduce the played pace (within scheduling noise)
        image_ts = [ts for t, _, ts in got if t == "/camera/image_raw"]
        assert np.diff(image_ts).mean() * 1e-9 == pytest.approx(1 / IMAGE_HZ, abs=0.01)
    mcap_file = next(out.glob("*.mcap"))
    decoded = [m for m in read_ros2_messages(str(mcap_file))]
    images = [m.ros_msg for m in decoded if m.channel.topic == "/camera/image_raw"]
    assert [bytes(m.data)[0] for m in images] == list(range(N_IMAGES))
    assert images[0].encoding == "rgb8" and images[0].header.frame_id == "camera"
    assert stats.published["/tf"] == N_TF


def test_typestore_registers_segloc_msgs_with_rosidl_hash():
    import json

    name = "segloc_msgs/msg/Segmentation"
    store = typestore_for([name])
    share = Path(sys.prefix) / "share" / "segloc_msgs" / "msg" / "Segmentation.json"
    if not share.is_file():
        pytest.skip(f"no rosidl type description at {share}")
    hashes = json.loads(share.read_text())["type_hashes"]
    expected = next(h["hash_string"] for h in hashes if h["type_name"] == name)
    assert store.hash_rihs01(name) == expected


def test_play_warns_when_recorded_type_hash_differs(tmp_path, caplog):
    bag = tmp_path / "bag"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        msgdef, _ = STORE.generate_msgdef("tf2_msgs/msg/TFMessage", ros_version=2)
        conn = writer.add_connection("/tf", "tf2_msgs/msg/TFMessage", msgdef=msgdef,
                                     rihs01="RIHS01_" + "ab" * 32)
        writer.write(conn, T0_NS, STORE.serialize_cdr(_tf(T0_NS, "odom", "base_link", 1.0),
                                                      "tf2_msgs/msg/TFMessage"))
    with caplog.at_level("WARNING", logger="segloc_ros.tools.bag"):
        assert play_bag(bag).published == {"/tf": 1}
    assert "RIHS01_abab" in caplog.text and "garbage" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="segloc_ros.tools.bag"):
        play_bag(write_bag(tmp_path / "good"), topics=["/tf_static"])
    assert "garbage" not in caplog.text


def _corrupt_middle_chunk(bag: Path) -> None:
    """Give the first message record of a middle MCAP chunk an impossible length."""
    from mcap.reader import make_reader

    path = next(bag.glob("*.mcap"))
    with path.open("rb") as f:
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    assert len(chunks) >= 5
    chunk = chunks[len(chunks) // 2]
    # chunk record: op(1) len(8) start(8) end(8) size(8) crc(4) compression(4+n) data_len(8) data
    first_record = chunk.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4 + 4 + len(chunk.compression) + 8
    with path.open("r+b") as f:
        f.seek(first_record + 1)
        f.write((2**40).to_bytes(8, "little"))


def _chunk_spans_and_times(bag: Path, topics: list[str]):
    from mcap.reader import make_reader

    path = next(bag.glob("*.mcap"))
    with path.open("rb") as f:
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    with Reader(bag) as reader:
        times = [t for _, t, _ in reader.messages([c for c in reader.connections if c.topic in topics])]
    return chunks, np.array(times)


def test_damaged_chunk_is_skipped_and_counted(tmp_path):
    """Only the damaged chunk's messages are lost: replay resumes right after that chunk (it used to
    step forward 1, 2, 4 ... ms past the damage and drop good messages of the next chunks)."""
    bag = write_bag(tmp_path / "bag", image_size=(640, 480))  # ~1 image per 1 MiB chunk
    topics = ["/camera/image_raw", "/tf"]
    chunks, times = _chunk_spans_and_times(bag, topics)
    damaged = chunks[len(chunks) // 2]
    lost = int(np.sum((times >= damaged.message_start_time) & (times <= damaged.message_end_time)))
    _corrupt_middle_chunk(bag)
    stats = play_bag(bag, rate=4.0, topics=topics)
    assert len(stats.read_errors) == 1 and "Truncated record" in stats.read_errors[0]
    assert stats.skipped == lost >= 1
    assert stats.total == N_IMAGES + N_TF - lost


def test_bag_with_nothing_readable_exits_4(tmp_path):
    """A damaged single-chunk bag used to 'play' with exit 0 having published nothing."""
    bag = write_bag(tmp_path / "bag")  # small images: one chunk
    chunks, _ = _chunk_spans_and_times(bag, ["/tf"])
    assert len(chunks) == 1
    path = next(bag.glob("*.mcap"))
    data = bytearray(path.read_bytes())
    c = chunks[0]
    first_record = c.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4 + 4 + len(c.compression) + 8
    data[first_record + 1: first_record + 9] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="nothing could be played"):
        play_bag(bag, topics=["/tf"])
    out = subprocess.run([sys.executable, "-m", "segloc_ros.cli", "bag", "play", str(bag)],
                         env=ros_environment(), capture_output=True, text=True, timeout=60)
    assert out.returncode == InputError.exit_code and "nothing could be played" in out.stderr
    assert "Traceback" not in out.stderr


def test_broken_bags_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        play_bag(tmp_path / "nope")
    empty = tmp_path / "no_metadata"
    empty.mkdir()
    with pytest.raises(InputError, match="no metadata.yaml"):
        play_bag(empty)
    truncated = write_bag(tmp_path / "truncated")
    mcap_file = next(truncated.glob("*.mcap"))
    mcap_file.write_bytes(mcap_file.read_bytes()[:-200])
    with pytest.raises(InputError, match="cannot be opened"):
        play_bag(truncated)
    bad_yaml = write_bag(tmp_path / "bad_yaml")
    (bad_yaml / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 9}\n")
    with pytest.raises(InputError, match="cannot be opened"):
        play_bag(bad_yaml)
    unknown = tmp_path / "unknown_type"
    with Writer(unknown, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/x", "nosuch_msgs/msg/Thing", msgdef="int32 a",
                                     rihs01="RIHS01_" + "0" * 64)
        writer.write(conn, T0_NS, b"\x00\x01\x00\x00\x07\x00\x00\x00")
    with pytest.raises(InputError, match="nosuch_msgs/msg/Thing"):
        play_bag(unknown)
    with pytest.raises(InputError, match="no topic"):
        play_bag(write_bag(tmp_path / "ok"), topics=["/missing"])


def test_cli_play_remaps_and_reports(tmp_path):
    bag = write_bag(tmp_path / "bag")
    listener = Listener({"/renamed_tf": "tf2_msgs/msg/TFMessage"})
    env = ros_environment()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "segloc_ros.cli", "bag", "play", str(bag), "--topics", "/tf",
             "--remap", "/tf:=/renamed_tf", "--wait-for", "/renamed_tf", "--rate", "2"],
            env=env, capture_output=True, text=True, timeout=60)
        received = listener.wait_for("/renamed_tf", N_TF)
    finally:
        listener.close()
    assert out.returncode == 0, out.stderr
    assert f"/renamed_tf: {N_TF} messages" in out.stdout and "timing error mean" in out.stdout
    assert len(received) == N_TF
    bad = subprocess.run([sys.executable, "-m", "segloc_ros.cli", "bag", "play",
                          str(tmp_path / "missing")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == InputError.exit_code and "does not exist" in bad.stderr


def test_cli_record_stops_cleanly_on_sigint(tmp_path):
    bag = write_bag(tmp_path / "bag")
    out = tmp_path / "recorded"
    proc = subprocess.Popen([sys.executable, "-m", "segloc_ros.cli", "bag", "record", "-o", str(out),
                             "/tf", "/tf_static"], env=ros_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    context = rclpy.Context()
    context.init()
    node = Node("bag_test_player", context=context)
    try:
        # the recorder subscribes once it sees the player's publishers; wait until it matched
        stats = play_bag(bag, topics=["/tf", "/tf_static"], wait_for=["/tf"], node=node,
                         wait_timeout_s=20.0)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        context.try_shutdown()
    assert proc.returncode == 0, stderr
    assert f"/tf [tf2_msgs/msg/TFMessage]: {N_TF} messages" in stdout
    with Reader(out) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts == {"/tf": N_TF, "/tf_static": N_STATIC} and stats.total == N_TF + N_STATIC


def _record_while_playing(bag: Path, out: Path, stop: str) -> Path:
    """`segloc bag record` (a process) of `bag`'s images and /tf while it plays, then stopped with
    `stop` ("sigint" or "kill", 0.5 s / 1 s after the last message); the recorded MCAP file."""
    topics = ["/camera/image_raw", "/tf"]
    proc = subprocess.Popen([sys.executable, "-m", "segloc_ros.cli", "bag", "record", "-o", str(out), *topics],
                            env=ros_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    context = rclpy.Context()
    context.init()
    node = Node("bag_test_source", context=context)
    try:
        play_bag(bag, topics=topics, wait_for=topics, node=node, wait_timeout_s=20.0)
        if stop == "kill":
            time.sleep(1.0)  # the recorder flushes closed chunks twice a second
            proc.kill()
        else:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        context.try_shutdown()
    return next(out.glob("*.mcap"))


def test_recorded_chunks_carry_crcs_and_a_flipped_byte_is_reported(tmp_path):
    """Chunks written by the recorder carry CRCs (rosbags wrote 0, so flipped bytes played silently):
    one flipped byte is reported on replay and costs that chunk only."""
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    out = tmp_path / "recorded"
    path = _record_while_playing(write_bag(tmp_path / "bag", image_size=(320, 240)), out, "sigint")
    chunks = [r for r in StreamReader(str(path), emit_chunks=True).records if isinstance(r, Chunk)]
    assert len(chunks) >= 5 and all(c.uncompressed_crc != 0 for c in chunks)
    topics = ["/camera/image_raw", "/tf"]
    spans, times = _chunk_spans_and_times(out, topics)
    assert len(times) >= N_IMAGES  # what the recorder got (its /tf may match late)
    victim = spans[len(spans) // 2]
    lost = int(np.sum((times >= victim.message_start_time) & (times <= victim.message_end_time)))
    data = bytearray(path.read_bytes())
    data[victim.chunk_start_offset + victim.chunk_length - 10] ^= 0x01  # inside the compressed data
    path.write_bytes(bytes(data))
    stats = play_bag(out, rate=4.0)
    assert len(stats.read_errors) == 1, stats.read_errors
    assert stats.total == len(times) - lost


def test_killed_recorder_leaves_a_bag_that_reindex_recovers(tmp_path):
    """SIGKILL mid-recording: the chunks closed so far are on disk (rosbags' writer left 0 bytes),
    play names the fix, and `segloc bag reindex` writes a complete new bag of them, leaving the
    original untouched."""
    out = tmp_path / "killed"  # 230 kB images: a chunk each
    path = _record_while_playing(write_bag(tmp_path / "bag", image_size=(320, 240)), out, "kill")
    assert path.stat().st_size > 1000  # more than a header: the closed chunks reached the disk
    with pytest.raises(InputError, match="segloc bag reindex"):
        play_bag(out)
    before = path.read_bytes()
    run = subprocess.run([sys.executable, "-m", "segloc_ros.cli", "bag", "reindex", str(out)],
                         env=ros_environment(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert path.read_bytes() == before and not (out / "metadata.yaml").exists()  # original untouched
    fixed = tmp_path / "killed_reindexed"
    assert "lost:" in run.stdout and str(fixed) in run.stdout  # the unfinished tail is reported
    with Reader(fixed) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        images = [bytes(raw) for c, _, raw in reader.messages() if c.topic == "/camera/image_raw"]
    assert counts["/camera/image_raw"] >= N_IMAGES - 2 and len(images) == counts["/camera/image_raw"]
    stats = play_bag(fixed, rate=4.0)
    assert stats.total == sum(counts.values()) and not stats.read_errors
