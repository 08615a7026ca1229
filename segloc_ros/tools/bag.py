"""`segloc bag play` / `segloc bag record`: rosbag2 replay and recording without rosbag2.

A pip-only install has no `ros2 bag`, so evaluation by replay needs its own player. Both tools
read and write rosbag2 directories with `rosbags` (MCAP and sqlite3, the metadata versions that
Humble, Jazzy and Kilted write) and move serialized CDR bytes straight between the bag and
rclpy, never deserializing: the player publishes `bytes` with each topic's recorded QoS, the
recorder subscribes with `raw=True` and stamps each message with its middleware receive time.

Timing: message i goes out at wall time `t0 + (stamp_i - stamp_first) / rate`, where stamps are
the bag's receive timestamps; the achieved error (publish call time minus target) is measured and
returned. /clock (rosgraph_msgs/Clock), when asked for, carries bag time at a fixed wall rate.

Player, recorder and their CLI share the bag opening and QoS handling here; writing MCAP files,
recovering damaged ones and the message definitions live in `bag_storage`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sqlite3
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segloc_core.cli import positive_float
from segloc_core.errors import InputError
from segloc_ros.tools.bag_storage import BagWriter, typestore_for

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile
    from rosbags.interfaces import Connection, Qos

LOG = logging.getLogger(__name__)


def _reader_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged bag raises: bad chunk, truncated record, broken sqlite page, failed
    decompression (lz4 raises RuntimeError)."""
    from rosbags.rosbag2 import ReaderError

    errors = [ReaderError, OSError, ValueError, EOFError, struct.error, sqlite3.DatabaseError,
              RuntimeError]
    for module, name in (("apsw", "Error"), ("compression.zstd", "ZstdError"),
                         ("backports.zstd", "ZstdError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return tuple(errors)


def message_class(msgtype: str) -> type:
    """The rclpy message class of "pkg/msg/Type"; InputError when the interface is not installed."""
    pkg, kind, name = (msgtype.split("/") + ["", ""])[:3]
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"message type {msgtype!r} is not installed here ({exc}); install its "
                         "interface package or leave the topic out with --topics") from None


# --- QoS -----------------------------------------------------------------------------------------

def qos_from_recorded(offered: Sequence[Qos], topic: str, message_count: int) -> QoSProfile:
    """The publisher QoS for a topic, adapted from the offers recorded in the bag as rosbag2 does.

    Reliable only if every recorded publisher was; transient_local only if every one was. A
    transient_local topic keeps all of its messages (up to 1000) for late joiners, because a
    /tf_static recorded from several static broadcasters holds one message per broadcaster and a
    depth of 1 would hand late subscribers only the last one. Bags without QoS (old metadata) get
    ROS defaults, except /tf_static, which is transient_local by convention.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    def all_are(attr: str, *names: str) -> bool:
        return bool(offered) and all(getattr(q, attr).name in names for q in offered)

    reliable = not offered or all_are("reliability", "RELIABLE", "BEST_AVAILABLE", "SYSTEM_DEFAULT")
    latched = (all_are("durability", "TRANSIENT_LOCAL", "BEST_AVAILABLE") if offered
               else topic == "/tf_static")
    depth = max([10] + [int(q.depth) for q in offered])
    if latched:
        depth = max(depth, min(message_count, 1000))
    keep_all = all_are("history", "KEEP_ALL")
    return QoSProfile(
        history=HistoryPolicy.KEEP_ALL if keep_all else HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def _qos_to_recorded(profile) -> Qos:
    """rclpy QoSProfile (a publisher's offer seen in the graph) -> rosbags Qos for metadata."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def t(duration) -> QosTime:
        ns = int(duration.nanoseconds)
        return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)

    return Qos(QosHistory(int(profile.history)), int(profile.depth),
               QosReliability(int(profile.reliability)), QosDurability(int(profile.durability)),
               t(profile.deadline), t(profile.lifespan), QosLiveliness(int(profile.liveliness)),
               t(profile.liveliness_lease_duration), bool(profile.avoid_ros_namespace_conventions))


# --- play ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimingStats:
    """Publish time minus target time over all published messages, in milliseconds."""

    count: int
    mean_abs_ms: float
    p95_abs_ms: float
    max_abs_ms: float


@dataclass(frozen=True)
class PlaybackStats:
    published: dict[str, int]       # messages published per output topic (after remapping)
    skipped: int                    # indexed messages that could not be read (damaged bag)
    read_errors: list[str]          # one line per unreadable stretch
    passes: int                     # complete or partial passes over the bag (--loop)
    wall_s: float                   # wall time from first to last message
    bag_s: float                    # bag time covered, first to last message, summed over passes
    clock_messages: int             # /clock messages published
    timing: TimingStats
    stopped: bool                   # ended by the stop event, not by the end of the bag

    @property
    def total(self) -> int:
        return sum(self.published.values())


@dataclass
class _Timing:
    """Running error statistics; keeps the last 100k samples for the percentile."""

    errors_ms: list[float] = field(default_factory=list)
    count: int = 0
    sum_abs: float = 0.0
    max_abs: float = 0.0

    def add(self, error_ms: float) -> None:
        self.count += 1
        self.sum_abs += abs(error_ms)
        self.max_abs = max(self.max_abs, abs(error_ms))
        if len(self.errors_ms) >= 100_000:
            del self.errors_ms[:50_000]
        self.errors_ms.append(abs(error_ms))

    def stats(self) -> TimingStats:
        if not self.count:
            return TimingStats(0, 0.0, 0.0, 0.0)
        return TimingStats(self.count, self.sum_abs / self.count,
                           float(np.percentile(self.errors_ms, 95)), self.max_abs)


def _open_reader(path: Path):
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise InputError(f"bag {path} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise InputError(f"bag {path}: no metadata.yaml; a rosbag2 directory has one (a bag "
                         f"whose recording was killed lacks it: `segloc bag reindex {path}` recovers "
                         "its readable messages into a new bag)")
    try:
        reader = Reader(path)
        reader.open()
    except (*_reader_errors(), KeyError, TypeError) as exc:
        raise InputError(f"bag {path} cannot be opened: {exc}") from None
    return reader


def chunk_spans(path: Path) -> list[tuple[int, int]]:
    """(first, last) log time of every chunk of the bag's MCAP files, from their summaries; []
    for sqlite3 bags or when no summary can be read."""
    from mcap.reader import make_reader

    spans = []
    for file in sorted(path.glob("*.mcap")) if path.is_dir() else [path]:
        try:
            with open(file, "rb") as f:
                summary = make_reader(f).get_summary()
        except Exception:  # noqa: BLE001 - a damaged summary: fall back to stepping in time
            return []
        if summary is None:
            return []
        spans += [(c.message_start_time, c.message_end_time) for c in summary.chunk_indexes]
    return sorted(spans)


def _resume_points(origin: int, end: int, spans: list[tuple[int, int]]) -> Iterator[int]:
    """Where to try reading again after a failure past `origin`: just after each chunk that ends
    at or after it (the damaged chunk alone is skipped, and the next one is read whole), or, without
    chunk spans (sqlite3), 1 ms, 2 ms, 4 ms... later."""
    if spans:
        yield from (e + 1 for _, e in spans if e >= origin)
        return
    step = 1_000_000
    while origin + step < end:
        yield origin + step
        step *= 2


def _tolerant_messages(reader, connections: list[Connection], start: int | None, end: int,
                       errors: list[str], spans: list[tuple[int, int]] = ()) -> Iterator[tuple[Connection, int, bytes]]:
    """Messages in time order; a stretch that cannot be read is skipped and reported.

    After a read error the stream resumes at the first readable time after the damage
    (`_resume_points`; `spans` from `chunk_spans`).
    """
    failures = _reader_errors()
    last = start
    while True:
        stream = iter(reader.messages(connections=connections, start=last, stop=end))
        try:
            for item in stream:
                last = item[1] + 1
                yield item
            return
        except failures as exc:
            origin = last if last is not None else reader.start_time
            for resume in _resume_points(origin, end, list(spans)):
                if resume >= end:
                    break
                stream = iter(reader.messages(connections=connections, start=resume, stop=end))
                try:
                    first = next(stream)
                except StopIteration:
                    break
                except failures:
                    continue
                errors.append(f"unreadable from {origin * 1e-9:.3f} s to {resume * 1e-9:.3f} s: "
                              f"{exc}")
                last = first[1] + 1
                yield first
                break
            else:
                errors.append(f"unreadable from {origin * 1e-9:.3f} s to the end: {exc}")
                return
            if last is None or last <= origin:
                errors.append(f"unreadable from {origin * 1e-9:.3f} s to the end: {exc}")
                return


def _parse_remap(remap: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    if remap is None:
        return {}
    if isinstance(remap, Mapping):
        return dict(remap)
    out = {}
    for item in remap:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise InputError(f"remapping {item!r} is not of the form from:=to")
        out[src] = dst
    return out


def _wait_until(deadline_ns: int, stop: threading.Event) -> bool:
    """Sleep until perf_counter_ns() reaches the deadline; False when stopped meanwhile.

    Event.wait for the bulk (it wakes at once on stop), then plain sleeps for the last 2 ms,
    whose wake-up latency is lower.
    """
    while True:
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining <= 0:
            return not stop.is_set()
        if remaining > 2_000_000:
            if stop.wait((remaining - 1_500_000) * 1e-9):
                return False
        else:
            time.sleep(remaining * 1e-9)


def play_bag(path: str | Path, *, rate: float = 1.0, loop: bool = False, clock: bool = False,
             clock_hz: float = 100.0, topics: Sequence[str] | None = None,
             remap: Mapping[str, str] | Sequence[str] | None = None, start_offset_s: float = 0.0,
             delay_s: float = 0.0, wait_for: Sequence[str] = (), wait_count: int = 1,
             wait_timeout_s: float = 10.0,
             stop_event: threading.Event | None = None, node: Node | None = None) -> PlaybackStats:
    """Publish a rosbag2's messages into the ROS graph at their recorded pace.

    `topics` selects bag topics (default: all); `remap` maps bag topic -> published topic
    ("from:=to" strings or a dict). Before the first message, playback waits until every topic
    in `wait_for` (published names) has `wait_count` matched subscribers (at most `wait_timeout_s`; DDS
    discovery between processes took 0-2 s here), then `delay_s` more. `clock` publishes bag time on /clock every 1/`clock_hz` wall seconds.
    With `loop` the bag repeats until `stop_event` is set. Without `node`, a private rclpy
    context and node are created (so this works inside a process that runs its own rclpy).
    Raises InputError for a bag that cannot be opened or holds types not installed here.
    """
    if rate <= 0:
        raise InputError(f"--rate must be positive, got {rate}")
    if clock and clock_hz <= 0:
        raise InputError(f"--clock rate must be positive, got {clock_hz}")
    path = Path(path)
    stop = stop_event or threading.Event()
    remaps = _parse_remap(remap)
    reader = _open_reader(path)
    context = None
    try:
        chosen = [c for c in reader.connections if topics is None or c.topic in topics]
        if topics is not None and (missing := sorted(set(topics) - {c.topic for c in chosen})):
            raise InputError(f"bag {path} has no topic(s) {missing}; it has "
                             f"{sorted({c.topic for c in reader.connections})}")
        if not chosen:
            raise InputError(f"bag {path} has no topics to play")
        classes = {c.msgtype: message_class(c.msgtype) for c in chosen}
        _warn_on_definition_mismatch(path, chosen)
        if node is None:
            import rclpy
            from rclpy.node import Node as RclpyNode

            context = rclpy.Context()
            context.init(args=[])  # the CLI's argv is not for rcl
            node = RclpyNode("segloc_bag_player", context=context,
                             start_parameter_services=False)
        by_topic: dict[str, list[Connection]] = defaultdict(list)
        for conn in chosen:
            by_topic[conn.topic].append(conn)
        publishers = {}
        for topic, conns in by_topic.items():
            if len({c.msgtype for c in conns}) > 1:
                raise InputError(f"bag {path}: topic {topic} has several types "
                                 f"{sorted({c.msgtype for c in conns})}; play it with --topics "
                                 "excluding it")
            offered = [q for c in conns for q in c.ext.offered_qos_profiles]
            qos = qos_from_recorded(offered, topic, sum(c.msgcount for c in conns))
            publishers[topic] = node.create_publisher(classes[conns[0].msgtype],
                                                      remaps.get(topic, topic), qos)
        clock_pub = None
        if clock:
            from rclpy.qos import QoSProfile
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        outputs = {remaps.get(topic, topic): pub for topic, pub in publishers.items()}
        if clock_pub is not None:
            outputs["/clock"] = clock_pub
        _wait_for_subscribers(outputs, wait_for, wait_count, wait_timeout_s, stop)
        stats = _play(reader, chosen, publishers, remaps, clock_pub, clock_hz, rate, loop,
                      int(start_offset_s * 1e9), delay_s, stop, chunk_spans(path))
        if stats.total == 0 and stats.read_errors:
            raise InputError(f"bag {path}: nothing could be played ({'; '.join(stats.read_errors)}); "
                             f"`segloc bag reindex {path}` recovers what is readable")
        return stats
    finally:
        reader.close()
        if context is not None:
            node.destroy_node()
            context.try_shutdown()


def _warn_on_definition_mismatch(path: Path, connections: list[Connection]) -> None:
    """Warn when a bag's RIHS01 type hash differs from this install's definition of the type.

    DDS matches topics by type name only, so bytes of a changed definition would reach
    subscribers as garbage. Bags older than rosbag2 metadata version 7 (Humble) carry no hash.
    """
    recorded = {c.msgtype: c.digest for c in connections if c.digest.startswith("RIHS01_")}
    if not recorded:
        return
    try:
        store = typestore_for(sorted(recorded))
    except InputError as exc:  # no local definition to compare with
        LOG.debug("type hashes not checked: %s", exc)
        return
    for msgtype, digest in recorded.items():
        local = store.hash_rihs01(msgtype)
        if local != digest:
            LOG.warning("bag %s: %s was recorded with definition hash %s, this install has %s; "
                        "subscribers may receive garbage", path, msgtype, digest, local)


def _wait_for_subscribers(by_name: dict, wait_for: Sequence[str], count: int, timeout_s: float,
                          stop: threading.Event) -> None:
    if unknown := sorted(set(wait_for) - set(by_name)):
        raise InputError(f"cannot wait for subscribers of {unknown}: not played "
                         f"(played: {sorted(by_name)})")
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        if all(by_name[t].get_subscription_count() >= count for t in wait_for):
            return
        time.sleep(0.01)
    if not stop.is_set():
        LOG.warning("no subscriber matched %s within %.1f s; playing anyway",
                    [t for t in wait_for if by_name[t].get_subscription_count() < count], timeout_s)


def _play(reader, chosen, publishers, remaps, clock_pub, clock_hz, rate, loop, offset_ns,
          delay_s, stop, spans) -> PlaybackStats:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    start = reader.start_time + offset_ns if offset_ns > 0 else None
    end = reader.end_time
    expected = sum(c.msgcount for c in chosen)
    if start is not None:  # count what the offset leaves out, to tell skipped from not played
        expected -= sum(1 for _ in _tolerant_messages(reader, chosen, None, start, [], spans))
    published: dict[str, int] = defaultdict(int)
    timing, errors = _Timing(), []
    clock_period_ns = int(1e9 / clock_hz) if clock_pub else 0
    clock_count, passes, skipped, bag_ns = 0, 0, 0, 0
    if delay_s > 0:
        stop.wait(delay_s)
    wall_first = wall_last = None
    stopped = stop.is_set()
    while not stopped:
        passes += 1
        pass_count, pass_errors = 0, len(errors)
        anchor_wall = anchor_bag = None
        next_clock = None
        first_stamp = last_stamp = None
        for conn, stamp, raw in _tolerant_messages(reader, chosen, start, end, errors, spans):
            if anchor_wall is None:
                anchor_wall, anchor_bag = time.perf_counter_ns(), stamp
                next_clock = anchor_wall
                first_stamp = stamp
            target = anchor_wall + int((stamp - anchor_bag) / rate)
            while clock_pub is not None and next_clock <= target:
                if not _wait_until(next_clock, stop):
                    break
                bag_now = anchor_bag + int((time.perf_counter_ns() - anchor_wall) * rate)
                clock_pub.publish(Clock(clock=Time(sec=bag_now // 1_000_000_000,
                                                   nanosec=bag_now % 1_000_000_000)))
                clock_count += 1
                next_clock += clock_period_ns
            if not _wait_until(target, stop):
                stopped = True
                break
            now = time.perf_counter_ns()
            publishers[conn.topic].publish(bytes(raw))
            timing.add((now - target) * 1e-6)
            published[remaps.get(conn.topic, conn.topic)] += 1
            pass_count += 1
            last_stamp = stamp
            wall_first = now if wall_first is None else wall_first
            wall_last = now
        if first_stamp is not None:
            bag_ns += last_stamp - first_stamp
        if not stopped and pass_count < expected and len(errors) == pass_errors:
            # a damaged record inside a chunk can end the chunk early without an error
            errors.append(f"{expected - pass_count} of the {expected} messages the bag lists could not "
                          "be read (damaged records, no error raised)")
        if not stopped and len(errors) > pass_errors:
            skipped += max(0, expected - pass_count)
        if not loop or pass_count == 0:
            break
        stopped = stop.is_set()
    wall_s = (wall_last - wall_first) * 1e-9 if wall_first is not None else 0.0
    return PlaybackStats(dict(published), skipped, errors, passes, wall_s, bag_ns * 1e-9,
                         clock_count, timing.stats(), stopped)


# --- record --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordStats:
    path: Path
    recorded: dict[str, int]        # messages written per topic
    types: dict[str, str]           # topic -> "pkg/msg/Type"
    duration_s: float               # wall time from start to stop


def record_bag(out: str | Path, topics: Sequence[str], *, duration: float | None = None,
               stop_event: threading.Event | None = None, discovery_timeout_s: float = 10.0,
               node: Node | None = None) -> RecordStats:
    """Record `topics` from the graph into a new MCAP rosbag2 directory `out` (`bag_storage.BagWriter`:
    chunks with CRCs, flushed as they close, so a killed recorder leaves a bag `segloc bag reindex`
    recovers up to its last 128 KiB).

    Types and QoS come from the graph (waits up to `discovery_timeout_s` for each topic to have
    a publisher); each subscription adapts to its publishers' QoS (reliable / transient_local only
    if all offer it) and the offers are stored in the metadata, so replay restores them. Stops
    after `duration` seconds or when `stop_event` is set. Without `node` a private rclpy context
    is used.
    """
    out = Path(out)
    if out.exists():
        raise InputError(f"{out} exists already; recording never overwrites")
    if not topics:
        raise InputError("no topics to record")
    stop = stop_event or threading.Event()
    context = None
    if node is None:
        import rclpy
        from rclpy.node import Node as RclpyNode

        context = rclpy.Context()
        context.init(args=[])  # the CLI's argv is not for rcl
        node = RclpyNode("segloc_bag_recorder", context=context, start_parameter_services=False)
    try:
        return _record(node, out, list(topics), duration, stop, discovery_timeout_s)
    finally:
        if context is not None:
            node.destroy_node()
            context.try_shutdown()


def _discover(node, topics: list[str], timeout_s: float, stop: threading.Event) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        graph = dict(node.get_topic_names_and_types())
        found = {t: graph[t][0] for t in topics if graph.get(t) and node.count_publishers(t)}
        if len(found) == len(topics) or time.monotonic() > deadline or stop.is_set():
            break
        time.sleep(0.05)
    missing = sorted(set(topics) - set(found))
    if missing and not stop.is_set():
        raise InputError(f"no publisher of {missing} appeared within {timeout_s:.0f} s")
    return found


def _record(node, out, topics, duration, stop, timeout_s):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    types = _discover(node, topics, timeout_s, stop)
    store = typestore_for(sorted(set(types.values())))
    writer = BagWriter(out)
    lock = threading.Lock()
    counts: dict[str, int] = defaultdict(int)
    subscriptions = []
    try:
        for topic, msgtype in types.items():
            offers = [info.qos_profile for info in node.get_publishers_info_by_topic(topic)]
            conn = writer.add_connection(topic, msgtype, store.generate_msgdef(msgtype, ros_version=2)[0],
                                         store.hash_rihs01(msgtype), [_qos_to_recorded(q) for q in offers])
            reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in offers)
            latched = bool(offers) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL
                                           for q in offers)
            qos = QoSProfile(
                depth=max([100] + [q.depth for q in offers]),
                reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

            def on_message(raw: bytes, info, conn=conn, topic=topic) -> None:
                with lock:
                    writer.write(conn, int(info["received_timestamp"]), raw)
                    counts[topic] += 1

            subscriptions.append(node.create_subscription(message_class(msgtype), topic,
                                                          on_message, qos, raw=True))
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        started = time.monotonic()
        end = started + duration if duration is not None else float("inf")
        flushed = started
        while not stop.is_set() and time.monotonic() < end and rclpy.ok(context=node.context):
            executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))
            if time.monotonic() - flushed > 0.5:  # closed chunks reach the file, killed or not
                with lock:
                    writer.flush()
                flushed = time.monotonic()
        executor.remove_node(node)
        elapsed = time.monotonic() - started
    finally:
        for sub in subscriptions:
            node.destroy_subscription(sub)
        with lock:
            try:
                writer.close()
            except OSError as exc:
                raise InputError(f"could not finish bag {out}: {exc}") from None
    return RecordStats(out, dict(counts), types, elapsed)


# --- CLI -----------------------------------------------------------------------------------------

def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT/SIGTERM end playback or recording cleanly (the bag is closed, stats printed)."""
    def handler(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _run_play(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    stats = play_bag(args.bag, rate=args.rate, loop=args.loop, clock=args.clock is not None,
                     clock_hz=args.clock or 100.0, topics=args.topics, remap=args.remap,
                     start_offset_s=args.start_offset, delay_s=args.delay,
                     wait_for=args.wait_for, wait_timeout_s=args.wait_timeout, stop_event=stop)
    for topic, count in sorted(stats.published.items()):
        print(f"{topic}: {count} messages")
    for line in stats.read_errors:
        print(f"skipped: {line}")
    t = stats.timing
    print(f"published {stats.total} messages in {stats.wall_s:.2f} s ({stats.passes} pass(es)), "
          f"{stats.skipped} skipped; timing error mean {t.mean_abs_ms:.3f} ms, "
          f"p95 {t.p95_abs_ms:.3f} ms, max {t.max_abs_ms:.3f} ms")
    return 0


def _run_record(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    stats = record_bag(args.output, args.topics, duration=args.duration, stop_event=stop,
                       discovery_timeout_s=args.wait)
    for topic, count in sorted(stats.recorded.items()):
        print(f"{topic} [{stats.types[topic]}]: {count} messages")
    print(f"recorded {sum(stats.recorded.values())} messages in {stats.duration_s:.2f} s "
          f"to {stats.path}")
    return 0


def _run_reindex(args: argparse.Namespace) -> int:
    from segloc_ros.tools.bag_storage import reindex

    for line in reindex(args.bag, args.output).lines():
        print(line)
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bag_command", metavar="{play,record,reindex}", required=True)
    play = sub.add_parser("play", help="publish a rosbag2 (MCAP or sqlite3) at its recorded pace")
    play.add_argument("bag", type=Path, help="rosbag2 directory (or a single .mcap/.db3 file)")
    play.add_argument("--rate", type=positive_float, default=1.0, help="playback speed factor")
    play.add_argument("--loop", action="store_true", help="repeat until interrupted")
    play.add_argument("--clock", type=float, nargs="?", const=100.0, default=None, metavar="HZ",
                      help="publish bag time on /clock (default 100 Hz)")
    play.add_argument("--topics", nargs="+", default=None, help="play only these bag topics")
    play.add_argument("--remap", nargs="+", default=None, metavar="FROM:=TO",
                      help="publish bag topic FROM as TO")
    play.add_argument("--start-offset", type=float, default=0.0, metavar="S",
                      help="skip the first S seconds of the bag")
    play.add_argument("--delay", type=float, default=0.0, metavar="S",
                      help="wait S seconds before the first message (lets subscribers match)")
    play.add_argument("--wait-for", nargs="+", default=(), metavar="TOPIC",
                      help="before playing, wait until these (published) topics have a subscriber")
    play.add_argument("--wait-timeout", type=float, default=10.0, metavar="S",
                      help="longest wait for --wait-for subscribers (then play anyway)")
    play.set_defaults(func=_run_play)
    record = sub.add_parser("record", help="record topics from the graph to an MCAP rosbag2")
    record.add_argument("-o", "--output", type=Path, required=True, help="new bag directory")
    record.add_argument("topics", nargs="+", help="topics to record")
    record.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: on Ctrl-C / SIGTERM)")
    record.add_argument("--wait", type=float, default=10.0, metavar="S",
                        help="how long to wait for the topics' publishers to appear")
    record.set_defaults(func=_run_record)
    reindex = sub.add_parser("reindex", help="recover the readable messages of a damaged or unfinished "
                             "MCAP bag (a killed recorder's) into a new, complete bag")
    reindex.add_argument("bag", type=Path, help="rosbag2 directory or .mcap file (never modified)")
    reindex.add_argument("-o", "--output", type=Path, default=None,
                         help="new bag directory (default: BAG_reindexed beside it)")
    reindex.set_defaults(func=_run_reindex)
