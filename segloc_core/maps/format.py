"""The labeled map and its file format: points with one cluster label each, plus the database images.

A map holds no appearance at all (no per-point descriptors, no colours): what a point carries is its
position, its cluster label, how much the segmentations of its observations agreed on that label and
how many database images observed it. The database images carry their pose, intrinsics and one
whitened global descriptor each, which retrieval needs to find the images (and so the points) a
query is likely to see.

Compactness (the reason for the layout, at most 16 bytes per point on the default world):
- positions are quantized on a grid of `position_step_m` (1 mm unless the map spans more than
  2^21 steps) relative to `origin_m`, 21 bits per axis packed into one uint64; the quantization
  error is at most step/2 per axis, sqrt(3)/2 * step (0.87 mm at 1 mm) in 3D;
- labels are uint8 for K <= 256 (uint16 above), confidence is the label agreement * 255 as uint8,
  the observation count is uint8 (saturating at 255; the exact count follows from visibility);
- visibility is exact but stored as runs of consecutive point indices per image, 4 bytes per run
  (uint16 gap from the previous run, uint16 length): points are ordered by (first observing image,
  last observing image descending), so along a trajectory an image's points form long runs
  instead of one index per observation;
- database descriptors are float16.

File layout (little-endian), format name `segloc.labeled_map`, version 1.1 (1.1 added the optional
`refiner_bias` and `refiner_spread` metadata; a 1.0 reader ignores them):

    magic  b"SEGLMAP\\0"   8 bytes
    L      uint64          length of the header
    header UTF-8 JSON      {"format", "version": [major, minor], "metadata": {...},
                            "arrays": [{"name", "dtype", "shape", "offset", "nbytes", "sha256"}],
                            "payload_nbytes"}
    payload                the arrays' raw bytes, each starting at a multiple of 8
    sha256 32 bytes        over everything before it

No pickle anywhere: arrays are raw bytes with a declared dtype and shape. The loader refuses, with
an InputError naming the file and the reason, a file that is foreign (magic, format name),
incompatible (other major version, unknown dtype or shape), truncated (shorter than declared) or
corrupt (checksum mismatch, naming the damaged array, or inconsistent contents).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segloc_core.descriptor import Whitening
from segloc_core.errors import InputError

if TYPE_CHECKING:
    from segloc_core.geometry import Camera, Pose

FORMAT_NAME = "segloc.labeled_map"
FORMAT_VERSION = (1, 1)
MAGIC = b"SEGLMAP\x00"
_CHECKSUM_BYTES = 32
_U16 = int(np.iinfo(np.uint16).max)
_ALIGN = 8

AXIS_BITS = 21
_AXIS_MAX = (1 << AXIS_BITS) - 1
DEFAULT_POSITION_STEP_M = 0.001
MAX_CAMERA_PARAMS = 12  # enough for every COLMAP model segloc accepts (OPENCV has 8)


@dataclass(frozen=True)
class MapMetadata:
    """What the map is and how to read it; everything here goes into the JSON header."""

    K: int  # number of cluster labels of the segmentation model
    model_hash: str  # SegmentationResult.model_hash of the model that labelled the points
    source: str  # where the geometry came from, e.g. "world:/path" or "colmap:/path"
    frame_id: str = "map"  # ROS frame of positions and poses
    units: str = "m"  # "m" when positions are metric; "units" for a reconstruction of unknown scale
    created_utc: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    min_agreement: float = 0.0  # points whose label agreement was below this were dropped
    # median depth of the points in the database images that see them (map units; 0: unknown, a
    # map from before it was recorded). Without metric scale the localizer's distances follow it.
    scene_depth: float = 0.0
    # systematic offset of the refiner's optimum from the true pose, measured at build time on
    # mapping images refined from their own poses: twist [rho, omega] of B with T_true = B T_refined
    # (camera frame; empty: not measured). The localizer corrects its fixes by it.
    refiner_bias: tuple[float, ...] = ()
    # covariance (6x6 row-major) of those offsets around refiner_bias, added to every fix's covariance
    refiner_spread: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class Cameras:
    """Distinct intrinsics of the database images, COLMAP models and pixel convention."""

    models: tuple[str, ...]
    size_px: np.ndarray  # (C, 2) uint32 width, height
    params: np.ndarray  # (C, MAX_CAMERA_PARAMS) float64, NaN after the model's parameters

    @classmethod
    def from_cameras(cls, cameras: Sequence[Camera]) -> Cameras:
        params = np.full((len(cameras), MAX_CAMERA_PARAMS), np.nan)
        for i, cam in enumerate(cameras):
            p = np.asarray(cam.params, np.float64)
            params[i, : len(p)] = p
        size = np.array([[c.width, c.height] for c in cameras], np.uint32).reshape(-1, 2)
        return cls(tuple(c.model for c in cameras), size, params)

    def camera(self, j: int) -> Camera:
        from segloc_core.geometry import Camera

        p = self.params[j]
        w, h = (int(v) for v in self.size_px[j])
        return Camera(self.models[j], w, h, p[~np.isnan(p)].copy())


@dataclass(frozen=True, eq=False)
class DatabaseImages:
    """The mapping images: name, pose T_cam_world, camera and whitened global descriptor."""

    names: tuple[str, ...]
    q_cam_world_xyzw: np.ndarray  # (I, 4) float64 rotation of T_cam_world
    t_cam_world_m: np.ndarray  # (I, 3) float64 translation of T_cam_world, metres
    camera_index: np.ndarray  # (I,) uint32 row of Cameras
    descriptors: np.ndarray  # (I, D) float16, PCA-whitened and L2-normalized

    def __len__(self) -> int:
        return len(self.names)

    def T_cam_world(self, i: int) -> Pose:
        from segloc_core.geometry import Pose

        return Pose.from_quat_xyzw(self.q_cam_world_xyzw[i], self.t_cam_world_m[i])


def group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, group of each input key): np.unique by sorting, which numpy's own
    np.unique (hash-based for integers since 2.3) does ~15x slower on millions of keys."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    head = np.ones(len(sk), bool)
    head[1:] = sk[1:] != sk[:-1]
    group = np.empty(len(keys), np.int64)
    group[order] = np.cumsum(head) - 1
    return sk[head], group


@dataclass(frozen=True, eq=False)
class Visibility:
    """Which points each database image observes, exactly, as runs of consecutive point indices.

    CSR over images: image i owns runs offsets[i] .. offsets[i+1] - 1. Each run is (gap, length)
    in uint16: it starts `gap` points after the end of the image's previous run (after index 0
    for its first run) and covers `length` points. A gap too large for uint16 is bridged by
    empty runs (length 0), so 4 bytes per run whatever the map size.
    """

    offsets: np.ndarray  # (I+1,) uint32
    run_gap: np.ndarray  # (R,) uint16
    run_length: np.ndarray  # (R,) uint16

    @classmethod
    def from_observations(cls, point_index: np.ndarray, image_index: np.ndarray,
                          n_images: int) -> Visibility:
        pt = np.asarray(point_index, np.int64)
        img = np.asarray(image_index, np.int64)
        n = int(pt.max()) + 1 if len(pt) else 1
        key = group_keys(img * n + pt)[0]  # sorted by image, then point; duplicates merged
        img, pt = key // n, key % n
        new_run = np.ones(len(pt), bool)
        new_run[1:] = (np.diff(pt) != 1) | (np.diff(img) != 0)
        heads = np.flatnonzero(new_run)
        start, length, run_img = pt[heads], np.diff(np.append(heads, len(pt))), img[heads]
        # split runs longer than uint16 allows
        pieces = -(-length // _U16)
        k = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        start = np.repeat(start, pieces) + k * _U16
        length = np.minimum(np.repeat(length, pieces) - k * _U16, _U16)
        run_img = np.repeat(run_img, pieces)
        prev_end = np.zeros(len(start), np.int64)
        same = np.zeros(len(start), bool)
        same[1:] = run_img[1:] == run_img[:-1]
        prev_end[1:] = np.where(same[1:], start[:-1] + length[:-1], 0)
        gap = start - prev_end
        # bridge big gaps with empty runs: a run with gap g needs floor(g / U16) fillers first
        fillers = gap // _U16
        total = 1 + fillers
        first = np.cumsum(total) - total
        gaps = np.full(int(total.sum()), _U16, np.int64)
        lengths = np.zeros(len(gaps), np.int64)
        last = first + fillers
        gaps[last], lengths[last] = gap - fillers * _U16, length
        owner = np.repeat(run_img, total)
        offsets = np.searchsorted(owner, np.arange(n_images + 1))
        return cls(offsets.astype(np.uint32), gaps.astype(np.uint16), lengths.astype(np.uint16))

    def _runs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute (start, length) int64 of the runs of `images`."""
        starts, lengths = [], []
        for i in images:
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            g, ln = self.run_gap[a:b].astype(np.int64), self.run_length[a:b].astype(np.int64)
            starts.append(np.cumsum(g) + np.cumsum(ln) - ln)
            lengths.append(ln)
        if not starts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        start, length = np.concatenate(starts), np.concatenate(lengths)
        keep = length > 0
        return start[keep], length[keep]

    def points_of(self, images: Sequence[int] | np.ndarray) -> np.ndarray:
        """Sorted unique indices of the points observed by any of `images`."""
        start, length = self._runs(np.asarray(images, np.int64).reshape(-1))
        if len(start) == 0:
            return np.zeros(0, np.int64)
        # expand runs without a Python loop: +1 steps, with a jump at the head of each run
        step = np.ones(int(length.sum()), np.int64)
        step[0] = start[0]
        step[np.cumsum(length)[:-1]] = start[1:] - (start[:-1] + length[:-1] - 1)
        return group_keys(np.cumsum(step))[0]

    def observation_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(point_index, image_index) of every observation, ordered by image then point."""
        n_images = len(self.offsets) - 1
        start, length = self._runs(np.arange(n_images))
        n_runs = np.array([int((self.run_length[self.offsets[i]:self.offsets[i + 1]] > 0).sum())
                           for i in range(n_images)], np.int64)
        run_image = np.repeat(np.arange(n_images), n_runs)
        before = np.concatenate([[0], np.cumsum(length)[:-1]])  # observations before each run
        point = np.repeat(start - before, length) + np.arange(int(length.sum()))
        return point, np.repeat(run_image, length)

    def max_end(self) -> int:
        """One past the largest point index any run reaches (validation)."""
        if len(self.run_gap) == 0:
            return 0
        ends = np.concatenate([[0], np.cumsum(self.run_gap.astype(np.int64) + self.run_length)])
        offsets = self.offsets.astype(np.int64)
        return int((ends[offsets[1:]] - ends[offsets[:-1]]).max())


@dataclass(frozen=True, eq=False)
class LabeledMap:
    """A labeled 3D map; build one with `assemble_map`, store with `save_map` / `load_map`."""

    meta: MapMetadata
    origin_m: np.ndarray  # (3,) float64, world coordinates of grid code 0
    position_step_m: float  # grid step of the quantized positions
    position_codes: np.ndarray  # (N,) uint64, 21 bits per axis: x | y << 21 | z << 42
    labels: np.ndarray  # (N,) uint8 (K <= 256) or uint16
    confidence_u8: np.ndarray  # (N,) uint8, label agreement among observations * 255
    n_observations: np.ndarray  # (N,) uint8, database images observing the point (saturates at 255)
    visibility: Visibility
    images: DatabaseImages
    cameras: Cameras
    whitening: Whitening  # fitted on the raw database descriptors; queries use the same one

    def __len__(self) -> int:
        return len(self.position_codes)

    @property
    def xyz(self) -> np.ndarray:
        """(N, 3) float64 positions in metres (frame `meta.frame_id`)."""
        return self.xyz_of(slice(None))

    def xyz_of(self, ids: np.ndarray | slice) -> np.ndarray:
        """Positions of some points only (a query needs a few thousand of a large map)."""
        return self.origin_m + decode_positions(self.position_codes[ids]) * self.position_step_m

    @property
    def confidence(self) -> np.ndarray:
        """(N,) float32 label agreement in [0, 1]."""
        return self.confidence_u8.astype(np.float32) / 255.0

    @property
    def quantization_error_max_m(self) -> float:
        """Largest 3D distance between a stored position and the position it came from."""
        return float(np.sqrt(3.0) / 2.0 * self.position_step_m)

    def points_of_images(self, images: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.visibility.points_of(images)


def encode_positions(xyz: np.ndarray, step_m: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Quantize positions onto a grid anchored at their minimum corner: (codes, origin_m, step_m).

    The step is `step_m` (default 1 mm) unless the extent needs a coarser grid to fit 21 bits per
    axis, so any map up to ~2 km stays at millimetre precision and a larger one still fits.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    if not np.isfinite(xyz).all():
        raise InputError("map positions contain NaN or infinite values")
    origin = xyz.min(0) if len(xyz) else np.zeros(3)
    extent = float((xyz.max(0) - origin).max()) if len(xyz) else 0.0
    step = max(step_m or DEFAULT_POSITION_STEP_M, extent / _AXIS_MAX)
    q = np.clip(np.rint((xyz - origin) / step), 0, _AXIS_MAX).astype(np.uint64)
    codes = q[:, 0] | (q[:, 1] << np.uint64(AXIS_BITS)) | (q[:, 2] << np.uint64(2 * AXIS_BITS))
    return codes, origin, step


def decode_positions(codes: np.ndarray) -> np.ndarray:
    """(N,) uint64 codes -> (N, 3) float64 grid coordinates (in steps)."""
    mask = np.uint64(_AXIS_MAX)
    return np.stack([(codes >> np.uint64(s * AXIS_BITS)) & mask for s in range(3)], 1).astype(np.float64)


def assemble_map(meta: MapMetadata, xyz: np.ndarray, labels: np.ndarray, confidence: np.ndarray,
                 point_index: np.ndarray, image_index: np.ndarray, images: DatabaseImages,
                 cameras: Cameras, whitening: Whitening, position_step_m: float | None = None) -> LabeledMap:
    """Quantize, order and pack points and observations into a LabeledMap.

    `point_index`/`image_index` list the observations (point i seen by database image j); points
    seen by no image are dropped, since retrieval could never select them.
    """
    n = len(xyz)
    point_index = np.asarray(point_index, np.int64)
    image_index = np.asarray(image_index, np.int64)
    if len(point_index) != len(image_index):
        raise InputError("observation point and image index arrays differ in length")
    if len(point_index) and (point_index.min() < 0 or point_index.max() >= n
                             or image_index.min() < 0 or image_index.max() >= len(images)):
        raise InputError("observation indices out of range of the points or database images")
    big = np.iinfo(np.int64).max
    first = np.full(n, big)
    last = np.full(n, -1)
    np.minimum.at(first, point_index, image_index)
    np.maximum.at(last, point_index, image_index)
    keep = np.flatnonzero(last >= 0)
    # runs stay long when points appear in the order the trajectory discovers and leaves them
    order = keep[np.lexsort((-last[keep], first[keep]))]
    new_id = np.full(n, -1)
    new_id[order] = np.arange(len(order))
    codes, origin, step = encode_positions(np.asarray(xyz)[order], position_step_m)
    vis = Visibility.from_observations(new_id[point_index], image_index, len(images))
    n_obs = np.bincount(new_id[point_index], minlength=len(order))
    label_dtype = np.uint8 if meta.K <= 256 else np.uint16
    return LabeledMap(
        meta=meta, origin_m=origin, position_step_m=step, position_codes=codes,
        labels=np.asarray(labels)[order].astype(label_dtype),
        confidence_u8=np.clip(np.rint(np.asarray(confidence, np.float64)[order] * 255), 0, 255).astype(np.uint8),
        n_observations=np.minimum(n_obs, 255).astype(np.uint8),
        visibility=vis, images=images, cameras=cameras,
        whitening=Whitening(np.asarray(whitening.mean, np.float32), np.asarray(whitening.projection, np.float32)))


# ---------------------------------------------------------------------------------------------
# file format

# name -> (allowed dtypes, ndim); the complete list of what a version-1 map stores
_SCHEMA: dict[str, tuple[tuple[str, ...], int]] = {
    "origin_m": (("<f8",), 1),
    "position_codes": (("<u8",), 1),
    "labels": (("|u1", "<u2"), 1),
    "confidence_u8": (("|u1",), 1),
    "n_observations": (("|u1",), 1),
    "visibility_offsets": (("<u4",), 1),
    "visibility_run_gap": (("<u2",), 1),
    "visibility_run_length": (("<u2",), 1),
    "image_q_cam_world_xyzw": (("<f8",), 2),
    "image_t_cam_world_m": (("<f8",), 2),
    "image_camera_index": (("<u4",), 1),
    "image_descriptors": (("<f2",), 2),
    "camera_size_px": (("<u4",), 2),
    "camera_params": (("<f8",), 2),
    "whitening_mean": (("<f4",), 1),
    "whitening_projection": (("<f4",), 2),
}


def _arrays(m: LabeledMap) -> dict[str, np.ndarray]:
    v, im, c = m.visibility, m.images, m.cameras
    return {
        "origin_m": m.origin_m, "position_codes": m.position_codes, "labels": m.labels,
        "confidence_u8": m.confidence_u8, "n_observations": m.n_observations,
        "visibility_offsets": v.offsets, "visibility_run_gap": v.run_gap,
        "visibility_run_length": v.run_length,
        "image_q_cam_world_xyzw": im.q_cam_world_xyzw, "image_t_cam_world_m": im.t_cam_world_m,
        "image_camera_index": im.camera_index, "image_descriptors": im.descriptors,
        "camera_size_px": c.size_px, "camera_params": c.params,
        "whitening_mean": m.whitening.mean, "whitening_projection": m.whitening.projection,
    }


def _header_metadata(m: LabeledMap) -> dict:
    meta = dict(m.meta.__dict__)
    meta.update(position_step_m=m.position_step_m, image_names=list(m.images.names),
                camera_models=list(m.cameras.models))
    return meta


def serialize_map(m: LabeledMap) -> bytes:
    """The map's file bytes; deterministic, so saving a loaded map reproduces the file exactly."""
    entries, chunks, offset = [], [], 0
    for name, arr in _arrays(m).items():
        allowed, _ = _SCHEMA[name]
        dtype = np.dtype(allowed[0]) if len(allowed) == 1 else arr.dtype.newbyteorder("<")
        arr = np.ascontiguousarray(arr, dtype=dtype)
        raw = arr.tobytes()
        entries.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                        "offset": offset, "nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
        pad = (-len(raw)) % _ALIGN
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    header = json.dumps({"format": FORMAT_NAME, "version": list(FORMAT_VERSION),
                         "metadata": _header_metadata(m), "arrays": entries,
                         "payload_nbytes": offset}, sort_keys=True, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<Q", len(header)) + header + b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def save_map(m: LabeledMap, path: str | Path) -> Path:
    """Write atomically (temporary file then rename), so a crash never leaves a half map behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialize_map(m))
    tmp.replace(path)
    return path


def _refuse(path: Path, kind: str, why: str) -> InputError:
    return InputError(f"{path}: {kind} map file: {why}")


def _parse_header(data: bytes, path: Path) -> tuple[dict, int]:
    if len(data) < len(MAGIC) + 8 + _CHECKSUM_BYTES and data[: len(MAGIC)] == MAGIC[: len(data)]:
        raise _refuse(path, "truncated", f"only {len(data)} bytes")
    if data[: len(MAGIC)] != MAGIC:
        raise _refuse(path, "foreign", f"starts with {data[:8]!r}, not the segloc map magic {MAGIC!r}")
    (hlen,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    if start + hlen + _CHECKSUM_BYTES > len(data):
        raise _refuse(path, "truncated or corrupt", f"header length {hlen} exceeds the file ({len(data)} bytes)")
    try:
        header = json.loads(data[start: start + hlen].decode())
        header["format"], header["version"], header["arrays"], header["payload_nbytes"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise _refuse(path, "corrupt", f"unreadable header ({exc})") from exc
    return header, start + hlen


def _check_arrays(header: dict, data: bytes, payload_start: int, path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for e in header["arrays"]:
        name = e.get("name")
        if name not in _SCHEMA:
            continue  # an array added by a later minor version; this reader does not need it
        allowed, ndim = _SCHEMA[name]
        if e["dtype"] not in allowed or len(e["shape"]) != ndim:
            raise _refuse(path, "incompatible", f"array {name!r} is {e['dtype']} {e['shape']}, "
                          f"expected dtype {allowed} with {ndim} dimension(s)")
        dtype = np.dtype(e["dtype"])
        if int(np.prod(e["shape"])) * dtype.itemsize != e["nbytes"]:
            raise _refuse(path, "corrupt", f"array {name!r}: {e['nbytes']} bytes do not match shape {e['shape']}")
        raw = data[payload_start + e["offset"]: payload_start + e["offset"] + e["nbytes"]]
        if hashlib.sha256(raw).hexdigest() != e["sha256"]:
            raise _refuse(path, "corrupt", f"array {name!r} fails its sha256 check")
        arrays[name] = np.frombuffer(raw, dtype).reshape(e["shape"]).copy()
    missing = sorted(set(_SCHEMA) - set(arrays))
    if missing:
        raise _refuse(path, "incompatible", f"missing array(s) {missing}")
    return arrays


def load_map(path: str | Path) -> LabeledMap:
    """Read and verify a map; raises InputError saying whether the file is foreign, incompatible,
    truncated or corrupt, and why."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read map file ({exc.strerror})") from exc
    header, payload_start = _parse_header(data, path)
    try:
        return _verified_map(header, data, payload_start, path)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        # a damaged header can still be valid JSON: a renamed key, a string where a number was
        raise _refuse(path, "corrupt", f"inconsistent header ({type(exc).__name__}: {exc})") from exc


def _verified_map(header: dict, data: bytes, payload_start: int, path: Path) -> LabeledMap:
    if header["format"] != FORMAT_NAME:
        raise _refuse(path, "foreign", f"format {header['format']!r}, expected {FORMAT_NAME!r}")
    version = tuple(header["version"])
    if version[0] != FORMAT_VERSION[0]:
        raise _refuse(path, "incompatible", f"format version {version[0]}.{version[1]}, this segloc "
                      f"reads {FORMAT_VERSION[0]}.x")
    expected = payload_start + header["payload_nbytes"] + _CHECKSUM_BYTES
    if len(data) < expected:
        raise _refuse(path, "truncated", f"{len(data)} bytes, the header declares {expected}")
    if len(data) > expected:
        raise _refuse(path, "corrupt", f"{len(data) - expected} unexpected bytes after the end")
    arrays = _check_arrays(header, data, payload_start, path)
    if hashlib.sha256(data[:-_CHECKSUM_BYTES]).digest() != data[-_CHECKSUM_BYTES:]:
        raise _refuse(path, "corrupt", "whole-file sha256 mismatch (header or padding damaged)")
    return _from_arrays(header["metadata"], arrays, path)


def _from_arrays(meta: dict, a: dict[str, np.ndarray], path: Path) -> LabeledMap:
    try:
        md = MapMetadata(K=int(meta["K"]), model_hash=str(meta["model_hash"]), source=str(meta["source"]),
                         frame_id=str(meta["frame_id"]), units=str(meta["units"]),
                         created_utc=str(meta["created_utc"]), min_agreement=float(meta["min_agreement"]),
                         scene_depth=float(meta.get("scene_depth", 0.0)),
                         refiner_bias=tuple(float(v) for v in meta.get("refiner_bias", ())),
                         refiner_spread=tuple(float(v) for v in meta.get("refiner_spread", ())))
        names, models = tuple(meta["image_names"]), tuple(meta["camera_models"])
        step = float(meta["position_step_m"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _refuse(path, "incompatible", f"metadata lacks or mistypes {exc}") from exc
    m = LabeledMap(
        meta=md, origin_m=a["origin_m"], position_step_m=step, position_codes=a["position_codes"],
        labels=a["labels"], confidence_u8=a["confidence_u8"], n_observations=a["n_observations"],
        visibility=Visibility(a["visibility_offsets"], a["visibility_run_gap"], a["visibility_run_length"]),
        images=DatabaseImages(names, a["image_q_cam_world_xyzw"], a["image_t_cam_world_m"],
                              a["image_camera_index"], a["image_descriptors"]),
        cameras=Cameras(models, a["camera_size_px"], a["camera_params"]),
        whitening=Whitening(a["whitening_mean"], a["whitening_projection"]))
    problem = validate_map(m)
    if problem:
        raise _refuse(path, "corrupt", problem)
    return m


def validate_map(m: LabeledMap) -> str | None:
    """Why the map's contents are inconsistent, or None; guards the refiner against bad indices."""
    n, n_img, v = len(m), len(m.images), m.visibility
    checks = [
        (m.origin_m.shape == (3,) and np.isfinite(m.origin_m).all(), "origin_m is not 3 finite numbers"),
        (m.position_step_m > 0, "position step is not positive"),
        (len(m.labels) == n and len(m.confidence_u8) == n and len(m.n_observations) == n,
         "per-point arrays differ in length"),
        (n == 0 or int(m.labels.max()) < m.meta.K, f"a label is >= K={m.meta.K}"),
        (len(v.offsets) == n_img + 1 and v.offsets[0] == 0 and v.offsets[-1] == len(v.run_gap)
         and len(v.run_gap) == len(v.run_length)
         and (np.diff(v.offsets.astype(np.int64)) >= 0).all(), "visibility offsets are inconsistent"),
        (v.max_end() <= n, "visibility runs reach past the last point"),
        (m.images.q_cam_world_xyzw.shape == (n_img, 4) and m.images.t_cam_world_m.shape == (n_img, 3)
         and len(m.images.camera_index) == n_img and len(m.images.descriptors) == n_img,
         "database image arrays differ in length"),
        (np.isfinite(m.images.q_cam_world_xyzw).all() and np.isfinite(m.images.t_cam_world_m).all(),
         "a database pose is not finite"),
        (len(m.cameras.models) == len(m.cameras.size_px) == len(m.cameras.params)
         and (n_img == 0 or int(m.images.camera_index.max()) < len(m.cameras.models)),
         "camera table and camera indices disagree"),
        (m.whitening.projection.ndim == 2 and m.whitening.projection.shape[0] == len(m.whitening.mean)
         and m.whitening.projection.shape[1] == m.images.descriptors.shape[1],
         "whitening parameters do not match the descriptor dimensions"),
        (len(m.meta.refiner_bias) in (0, 6) and len(m.meta.refiner_spread) in (0, 36)
         and np.isfinite(m.meta.refiner_bias).all() and np.isfinite(m.meta.refiner_spread).all(),
         "refiner_bias / refiner_spread are not 6 / 36 finite numbers"),
    ]
    return next((why for ok, why in checks if not ok), None)


# ---------------------------------------------------------------------------------------------
# size report

SIFT_BYTES_PER_OBSERVATION = 128  # uint8 SIFT descriptor
SIFT_BYTES_PER_POSITION = 12  # float32 xyz


@dataclass(frozen=True)
class MapSizeReport:
    """Storage of a map file against the same map stored the feature-based way (SIFT)."""

    points: int
    images: int
    observations: int
    K: int
    file_bytes: int
    bytes_per_point: float
    sift_bytes: int  # 128 B per observation + 12 B float32 position per point
    sift_ratio: float  # sift_bytes / file_bytes
    quantization_error_max_mm: float
    array_bytes: dict[str, int]

    def lines(self) -> list[str]:
        out = [f"points            {self.points}", f"database images   {self.images}",
               f"observations      {self.observations}", f"K                 {self.K}",
               f"bytes total       {self.file_bytes}", f"bytes per point   {self.bytes_per_point:.2f}",
               f"position error    <= {self.quantization_error_max_mm:.3f} mm (grid quantization)",
               f"with SIFT         {self.sift_bytes} bytes (128 B per observation + float32 positions), "
               f"{self.sift_ratio:.1f}x this map"]
        out += [f"  {name:24s} {nbytes} B" for name, nbytes in self.array_bytes.items()]
        return out


def size_report(path: str | Path) -> MapSizeReport:
    m = load_map(path)
    n_bytes = Path(path).stat().st_size
    n_obs = int(m.visibility.run_length.astype(np.int64).sum())  # empty filler runs add 0
    sift = n_obs * SIFT_BYTES_PER_OBSERVATION + len(m) * SIFT_BYTES_PER_POSITION
    return MapSizeReport(
        points=len(m), images=len(m.images), observations=n_obs, K=m.meta.K, file_bytes=n_bytes,
        bytes_per_point=n_bytes / max(len(m), 1), sift_bytes=sift, sift_ratio=sift / n_bytes,
        quantization_error_max_mm=m.quantization_error_max_m * 1e3,
        array_bytes={k: int(v.nbytes) for k, v in _arrays(m).items()})
