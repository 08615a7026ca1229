"""rosbag2 MCAP files that survive a killed recorder and show their damage: writing and recovery.

Why not rosbags' writer: it stores a CRC of 0 in every chunk (a flipped byte is then played and
scored silently) and keeps the file in 1 MB buffers until it closes, so a recorder killed with
SIGKILL left a 0-byte bag after 15 s and 2613 messages. `BagWriter` writes the same rosbag2 layout
(one MCAP file with the `ros2` profile, `ros2msg` schemas, `offered_qos_profiles` channel metadata,
and `metadata.yaml` at close) with the `mcap` library: zstd chunks of `CHUNK_BYTES` with their
CRCs, flushed to the file as they close, so a killed recorder loses at most its open chunk.

`reindex` is what `ros2 bag reindex` is for a pip-only install, and more: it reads an MCAP file
record by record (no summary needed), keeps every chunk whose CRC and decompression hold, reports
the ones that do not and a truncated tail, and writes a complete new bag (summary, indexes,
metadata.yaml) beside the original, which it never modifies.

`typestore_for` gives the message definitions and type hashes both need (and the player's check).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from segloc_core.errors import InputError

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

LOG = logging.getLogger(__name__)

CHUNK_BYTES = 128 * 1024  # what a killed recorder can lose; small enough for low-rate topics too


@dataclass
class _Topic:
    name: str
    msgtype: str
    qos: list  # rosbags Qos, as offered by the publishers
    digest: str  # RIHS01 type hash (type_description_hash), '' when unknown
    count: int = 0


@dataclass
class BagWriter:
    """A new rosbag2 directory `out` with one MCAP file (see the module docstring)."""

    out: Path
    chunk_bytes: int = CHUNK_BYTES
    _topics: dict[int, _Topic] = field(default_factory=dict)
    _schemas: dict[str, int] = field(default_factory=dict)
    _start: int | None = None
    _end: int | None = None

    def __post_init__(self) -> None:
        from mcap.writer import CompressionType, Writer

        self.out = Path(self.out)
        if self.out.exists():
            raise InputError(f"{self.out} exists already; a bag is never overwritten")
        self.out.mkdir(parents=True)
        self.path = self.out / f"{self.out.name}.mcap"
        self._file = open(self.path, "xb")
        self._mcap = Writer(self._file, chunk_size=self.chunk_bytes, compression=CompressionType.ZSTD,
                            enable_crcs=True)
        self._mcap.start(profile="ros2", library="segloc")

    def add_connection(self, topic: str, msgtype: str, msgdef: str, digest: str, qos: list) -> int:
        """A channel for `topic`; msgdef: the ros2msg text of `msgtype` with its dependencies."""
        from rosbags.rosbag2.metadata import dump_qos_v8

        if msgtype not in self._schemas:
            self._schemas[msgtype] = self._mcap.register_schema(msgtype, "ros2msg", msgdef.encode())
        channel = self._mcap.register_channel(topic, "cdr", self._schemas[msgtype],
                                              {"offered_qos_profiles": dump_qos_v8(qos)})
        self._topics[channel] = _Topic(topic, msgtype, list(qos), digest)
        return channel

    def write(self, channel: int, stamp_ns: int, data: bytes) -> None:
        topic = self._topics[channel]
        self._mcap.add_message(channel, log_time=stamp_ns, data=bytes(data), publish_time=stamp_ns,
                               sequence=topic.count)
        topic.count += 1
        self._start = stamp_ns if self._start is None else min(self._start, stamp_ns)
        self._end = stamp_ns if self._end is None else max(self._end, stamp_ns)

    def flush(self) -> None:
        """Push closed chunks from Python's buffer to the file (the recorder calls it twice a second)."""
        self._file.flush()

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._topics.values():
            out[t.name] = out.get(t.name, 0) + t.count
        return out

    def close(self) -> None:
        """Finish the MCAP file (last chunk, summary, indexes) and write metadata.yaml."""
        self._mcap.finish()
        self._file.close()
        write_metadata(self.out, self.path, list(self._topics.values()), self._start or 0, self._end or 0)


def write_metadata(out: Path, mcap_path: Path, topics: list[_Topic], start_ns: int, end_ns: int) -> Path:
    """metadata.yaml (rosbag2 version 9) for a bag of one MCAP file."""
    import yaml
    from rosbags.rosbag2.metadata import dump_qos_v9

    count = sum(t.count for t in topics)
    duration = max(end_ns - start_ns, 0) + (1 if count else 0)  # rosbag2 counts the last message
    info = {
        "version": 9,
        "storage_identifier": "mcap",
        "relative_file_paths": [mcap_path.name],
        "duration": {"nanoseconds": duration},
        "starting_time": {"nanoseconds_since_epoch": start_ns},
        "message_count": count,
        "topics_with_message_count": [
            {"topic_metadata": {"name": t.name, "type": t.msgtype, "serialization_format": "cdr",
                                "offered_qos_profiles": dump_qos_v9(t.qos), "type_description_hash": t.digest},
             "message_count": t.count} for t in topics],
        "compression_format": "",
        "compression_mode": "",
        "files": [{"path": mcap_path.name, "starting_time": {"nanoseconds_since_epoch": start_ns},
                   "duration": {"nanoseconds": duration}, "message_count": count}],
        "custom_data": None,
        "ros_distro": "segloc",
    }
    path = out / "metadata.yaml"
    path.write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
    return path


@dataclass
class ReindexReport:
    out: Path
    recovered: dict[str, int]  # topic -> messages
    damaged: list[str]  # what could not be read, in words

    def lines(self) -> list[str]:
        lines = [f"{topic}: {n} messages" for topic, n in sorted(self.recovered.items())]
        lines += [f"lost: {what}" for what in self.damaged]
        lines.append(f"recovered {sum(self.recovered.values())} messages into {self.out}")
        return lines


def _mcap_files(bag: Path) -> list[Path]:
    if bag.is_file() and bag.suffix == ".mcap":
        return [bag]
    files = sorted(bag.glob("*.mcap")) if bag.is_dir() else []
    if not files:
        raise InputError(f"{bag}: no MCAP file to reindex (sqlite3 bags keep their index in the database)")
    return files


class _FileCopy:
    """Copies one MCAP file's records into a BagWriter as they are read."""

    def __init__(self, writer: BagWriter):
        self.writer = writer
        self.schemas: dict[int, object] = {}
        self.channels: dict[int, object] = {}
        self.ids: dict[int, int] = {}  # source channel id -> new channel id
        self.orphans = 0  # messages whose channel definition was in a lost chunk

    def take(self, record) -> None:
        from mcap.records import Channel, Message, Schema

        if isinstance(record, Schema):
            self.schemas[record.id] = record
        elif isinstance(record, Channel):
            self.channels[record.id] = record
        elif isinstance(record, Message):
            channel = self.channels.get(record.channel_id)
            if channel is None or channel.schema_id not in self.schemas:
                self.orphans += 1
                return
            if record.channel_id not in self.ids:
                self.ids[record.channel_id] = _reconnect(self.writer, channel, self.schemas[channel.schema_id])
            self.writer.write(self.ids[record.channel_id], record.log_time, record.data)


def reindex(bag: Path, out: Path | None = None) -> ReindexReport:
    """Every readable message of `bag`'s MCAP files into a new, complete bag `out` (default
    `<bag>_reindexed`); damaged chunks and a truncated tail are skipped and reported. Messages are
    copied as they are read (MCAP readers order them by time), so memory stays flat."""
    import shutil

    from mcap.exceptions import McapError
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader, breakup_chunk

    bag = Path(bag)
    if not bag.exists():
        raise InputError(f"bag {bag} does not exist")
    files = _mcap_files(bag)
    out = Path(out) if out is not None else bag.with_name(f"{bag.name.removesuffix('.mcap')}_reindexed")
    writer = BagWriter(out)
    damaged: list[str] = []
    try:
        for path in files:
            copy = _FileCopy(writer)
            chunks = 0
            try:
                for record in StreamReader(str(path), emit_chunks=True).records:
                    if not isinstance(record, Chunk):
                        copy.take(record)
                        continue
                    chunks += 1
                    try:
                        inner = breakup_chunk(record, validate_crc=True)
                    except (McapError, ValueError, RuntimeError) as exc:
                        span = f"{record.message_start_time * 1e-9:.3f}-{record.message_end_time * 1e-9:.3f} s"
                        damaged.append(f"{path.name}: chunk {chunks} (log time {span}): {exc}")
                        continue
                    for item in inner:
                        copy.take(item)
            except (McapError, ValueError, OSError, EOFError) as exc:
                damaged.append(f"{path.name}: nothing readable after chunk {chunks} (a truncated or "
                               f"damaged tail: {type(exc).__name__}: {exc})")
            if copy.orphans:
                damaged.append(f"{path.name}: {copy.orphans} messages whose channel definition was lost")
    finally:
        writer.close()
    if not any(writer.counts.values()):
        shutil.rmtree(out)
        raise InputError(f"bag {bag}: no readable message to recover ({'; '.join(damaged) or 'empty'})")
    return ReindexReport(out, writer.counts, damaged)


def _reconnect(writer: BagWriter, channel, schema) -> int:
    """The recovered channel in the new bag, with its QoS offers and type hash where known."""
    from rosbags.rosbag2.metadata import parse_qos

    try:
        qos = parse_qos(channel.metadata.get("offered_qos_profiles", "")) if channel.metadata else []
    except Exception:  # noqa: BLE001 - QoS offers are a hint for replay; a damaged one is dropped
        qos = []
    try:
        digest = typestore_for([schema.name]).hash_rihs01(schema.name)
    except (InputError, KeyError):
        digest = ""
    return writer.add_connection(channel.topic, schema.name, schema.data.decode(errors="replace"), digest, qos)


def _share_dir(package: str) -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(package))
    except (ImportError, LookupError, ValueError, OSError):  # OSError: no AMENT_PREFIX_PATH
        candidate = Path(sys.prefix) / "share" / package
        return candidate if candidate.is_dir() else None


def typestore_for(msgtypes: Sequence[str]) -> Typestore:
    """Kilted's typestore plus the .msg definitions of installed packages it does not know.

    The bag's message definitions and RIHS01 hashes come from here, so a package's own types
    (segloc_msgs) are registered from the .msg files in its share directory, dependencies included.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    pending = [t for t in msgtypes if t not in store.fielddefs]
    seen: set[str] = set()
    while pending:
        pkg = pending.pop().split("/")[0]
        if pkg in seen:
            continue
        seen.add(pkg)
        share = _share_dir(pkg)
        files = sorted((share / "msg").glob("*.msg")) if share else []
        if not files:
            raise InputError(f"no message definitions for package {pkg!r} (looked for "
                             f"share/{pkg}/msg/*.msg); cannot record its types")
        types = {}
        for file in files:
            types.update(get_types_from_msg(file.read_text(), f"{pkg}/msg/{file.stem}"))
        for _, fields in types.values():
            for _, desc in fields:
                nested = _nested_names(desc)
                pending.extend(n for n in nested if n not in store.fielddefs and n not in types)
        store.register(types)
    return store


def _nested_names(desc) -> list[str]:
    """Message type names referenced by a rosbags field description (nested or arrays thereof)."""
    kind, arg = desc
    if getattr(kind, "name", "") == "NAME":
        return [arg]
    if isinstance(arg, tuple) and arg and isinstance(arg[0], tuple):
        return _nested_names(arg[0])
    return []
