"""Map file format: exact round trip, compactness, no appearance, refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from segloc_core.descriptor import Whitening
from segloc_core.errors import InputError
from segloc_core.maps.format import (
    FORMAT_NAME,
    MAGIC,
    Cameras,
    DatabaseImages,
    MapMetadata,
    Visibility,
    assemble_map,
    load_map,
    save_map,
    serialize_map,
    size_report,
)


def synthetic_map(n_points: int = 5000, n_images: int = 40, K: int = 100, seed: int = 0):
    """Points along a corridor seen by a trajectory of images, each image seeing a window."""
    rng = np.random.default_rng(seed)
    xyz = np.stack([rng.uniform(0, 200, n_points), rng.uniform(-5, 5, n_points),
                    rng.uniform(0, 10, n_points)], 1)
    cam_x = np.linspace(0, 200, n_images)
    obs_p, obs_i = [], []
    for i, cx in enumerate(cam_x):
        seen = np.flatnonzero((xyz[:, 0] > cx) & (xyz[:, 0] < cx + 30) & (rng.random(n_points) > 0.05))
        obs_p.append(seen)
        obs_i.append(np.full(len(seen), i))
    q = np.tile([0.0, 0.0, 0.0, 1.0], (n_images, 1))
    t = np.stack([-cam_x, np.zeros(n_images), np.zeros(n_images)], 1)
    desc = rng.standard_normal((n_images, 64)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    images = DatabaseImages(tuple(f"img_{i:04d}.png" for i in range(n_images)), q, t,
                            np.zeros(n_images, np.uint32), desc.astype(np.float16))
    params = np.full((1, 12), np.nan)
    params[0, :4] = [300.0, 300.0, 320.0, 240.0]
    cameras = Cameras(("PINHOLE",), np.array([[640, 480]], np.uint32), params)
    meta = MapMetadata(K=K, model_hash="test", source="synthetic")
    m = assemble_map(meta, xyz, rng.integers(0, K, n_points), rng.uniform(0.3, 1, n_points),
                     np.concatenate(obs_p), np.concatenate(obs_i), images, cameras,
                     Whitening(np.zeros(128, np.float32), rng.standard_normal((128, 64)).astype(np.float32)))
    return m, xyz, (np.concatenate(obs_p), np.concatenate(obs_i))


def test_round_trip_is_bit_identical_and_exact(tmp_path):
    m, xyz, _ = synthetic_map()
    p1 = save_map(m, tmp_path / "a.segmap")
    loaded = load_map(p1)
    p2 = save_map(loaded, tmp_path / "b.segmap")
    assert p1.read_bytes() == p2.read_bytes()
    for name in ("position_codes", "labels", "confidence_u8", "n_observations", "origin_m"):
        assert np.array_equal(getattr(m, name), getattr(loaded, name))
    assert np.array_equal(m.images.descriptors, loaded.images.descriptors)
    assert loaded.meta == m.meta
    # positions come back within the stated quantization error (and in the map's point order)
    d = np.linalg.norm(loaded.xyz[:200, None] - xyz[None], axis=2).min(1)
    assert d.max() <= loaded.quantization_error_max_m + 1e-12


def test_refiner_bias_round_trips_and_older_maps_have_none(tmp_path):
    """Format 1.1 adds the measured refiner bias (`localize.bias`); a 1.0 map (no such key) loads
    with none, so the localizer leaves its fixes as the refiner found them."""
    import dataclasses

    m, _, _ = synthetic_map(n_points=500, n_images=8)
    twist = (0.01, -0.02, -0.37, 0.003, -0.001, 0.0005)
    spread = tuple(np.diag([0.04, 0.03, 0.09, 1e-4, 1e-4, 1e-4]).ravel().tolist())
    biased = dataclasses.replace(m, meta=dataclasses.replace(m.meta, refiner_bias=twist, refiner_spread=spread))
    loaded = load_map(save_map(biased, tmp_path / "b.segmap")).meta
    assert loaded.refiner_bias == twist and loaded.refiner_spread == spread
    data = serialize_map(m)
    (n,) = struct.unpack_from("<Q", data, 8)
    header = json.loads(data[16:16 + n])
    assert header["version"] == [1, 1] and header["metadata"]["refiner_bias"] == []
    del header["metadata"]["refiner_bias"], header["metadata"]["refiner_spread"]
    header["version"] = [1, 0]
    new = json.dumps(header).encode()
    body = data[:8] + struct.pack("<Q", len(new)) + new + data[16 + n:-32]
    path = tmp_path / "old.segmap"
    path.write_bytes(body + hashlib.sha256(body).digest())
    assert load_map(path).meta.refiner_bias == () and load_map(path).meta.refiner_spread == ()
    # a damaged bias is refused with the reason, not a reshape traceback in the localizer
    bad = dataclasses.replace(m, meta=dataclasses.replace(m.meta, refiner_bias=(0.1, float("nan"))))
    with pytest.raises(InputError, match="refiner_bias"):
        load_map(save_map(bad, tmp_path / "bad.segmap"))


def test_visibility_is_exact(tmp_path):
    m, xyz, (obs_p, obs_i) = synthetic_map(n_points=2000, n_images=20)
    loaded = load_map(save_map(m, tmp_path / "m.segmap"))
    # map points are reordered; match them back to the input by position
    codes_xyz = loaded.xyz
    for i in (0, 7, 12):
        pts = loaded.points_of_images([i])
        expected = np.unique(obs_p[obs_i == i])
        got = codes_xyz[pts]
        assert len(pts) == len(expected)
        assert np.abs(np.sort(got[:, 0]) - np.sort(xyz[expected, 0])).max() <= 1e-3
    both = loaded.points_of_images([3, 4])
    assert np.array_equal(both, np.union1d(loaded.points_of_images([3]), loaded.points_of_images([4])))
    p, i = loaded.visibility.observation_pairs()
    assert len(p) == len(obs_p) and np.array_equal(np.bincount(p, minlength=len(loaded)), loaded.n_observations)


def test_compact_under_16_bytes_per_point_and_no_appearance(tmp_path):
    m, _, _ = synthetic_map(n_points=50000, n_images=100)
    path = save_map(m, tmp_path / "m.segmap")
    report = size_report(path)
    assert report.bytes_per_point <= 16.0, report.lines()
    assert report.sift_ratio > 5
    # no appearance: per-point data is position, label, confidence, count and nothing else
    header = json.loads(path.read_bytes()[16: 16 + struct.unpack_from("<Q", path.read_bytes(), 8)[0]])
    per_point = {e["name"] for e in header["arrays"] if e["shape"] and e["shape"][0] == len(m)}
    assert per_point == {"position_codes", "labels", "confidence_u8", "n_observations"}
    assert not any(word in e["name"] for e in header["arrays"] for word in ("rgb", "color", "colour"))
    assert next(e for e in header["arrays"] if e["name"] == "labels")["dtype"] == "|u1"


def test_long_runs_split_and_expand_exactly():
    pts = np.concatenate([np.arange(70_000), np.arange(5, 9)])
    imgs = np.concatenate([np.zeros(70_000, int), np.full(4, 2)])
    vis = Visibility.from_observations(pts, imgs, 3)
    assert vis.run_length.dtype == np.uint16 and vis.run_gap.dtype == np.uint16
    assert vis.run_gap.tolist() == [0, 0, 5]  # 70000 points = two runs; image 2 starts 5 points in
    assert np.array_equal(vis.points_of([0]), np.arange(70_000))
    assert len(vis.points_of([1])) == 0 and np.array_equal(vis.points_of([2]), np.arange(5, 9))
    p, i = vis.observation_pairs()
    assert np.array_equal(p, pts) and np.array_equal(i, imgs)


def test_huge_gaps_are_bridged():
    pts = np.array([3, 200_000, 200_001, 1_000_000])
    vis = Visibility.from_observations(pts, np.zeros(4, int), 2)
    assert np.array_equal(vis.points_of([0]), pts) and len(vis.points_of([1])) == 0
    assert vis.max_end() == 1_000_001
    assert np.array_equal(vis.observation_pairs()[0], pts)


def test_labels_widen_above_256_classes(tmp_path):
    m, _, _ = synthetic_map(n_points=500, n_images=10, K=1000)
    loaded = load_map(save_map(m, tmp_path / "m.segmap"))
    assert loaded.labels.dtype == np.uint16 and loaded.labels.max() >= 256


@pytest.mark.parametrize("damage, kind", [
    ("flip_payload", "corrupt"), ("flip_checksum", "corrupt"), ("truncate", "truncated"),
    ("foreign", "foreign"), ("npz", "foreign"), ("version", "incompatible"), ("empty", "truncated"),
    ("format", "foreign"),
])
def test_bad_files_are_refused_with_reason(tmp_path, damage, kind):
    m, _, _ = synthetic_map(n_points=300, n_images=5)
    data = bytearray(serialize_map(m))
    hlen = struct.unpack_from("<Q", data, 8)[0]
    header = json.loads(bytes(data[16: 16 + hlen]))
    if damage == "flip_payload":
        off = 16 + hlen + next(e for e in header["arrays"] if e["name"] == "labels")["offset"]
        data[off] ^= 0xFF
    elif damage == "flip_checksum":
        data[-1] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "foreign":
        data = bytearray(b"\x89PNG\r\n\x1a\n" + bytes(data[8:]))
    elif damage == "npz":
        np.savez(tmp_path / "x.npz", a=np.zeros(3))
        data = bytearray((tmp_path / "x.npz").read_bytes())
    elif damage == "empty":
        data = bytearray(MAGIC[:4])
    elif damage in ("version", "format"):
        if damage == "version":
            header["version"] = [2, 0]
        else:
            header["format"] = "other." + FORMAT_NAME
        new = json.dumps(header).encode()
        data = bytearray(data[:8] + struct.pack("<Q", len(new)) + new + data[16 + hlen:])
    path = tmp_path / "bad.segmap"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as exc:
        load_map(path)
    assert kind in str(exc.value) and str(path) in str(exc.value)
    if damage == "flip_payload":
        assert "'labels'" in str(exc.value)


def test_out_of_range_content_is_refused(tmp_path):
    m, _, _ = synthetic_map(n_points=300, n_images=5, K=10)
    gaps = m.visibility.run_gap.copy()
    gaps[-1] = 60_000
    bad = Visibility(m.visibility.offsets, gaps, m.visibility.run_length)
    from dataclasses import replace
    path = save_map(replace(m, visibility=bad), tmp_path / "bad.segmap")
    with pytest.raises(InputError, match="visibility runs"):
        load_map(path)


def test_single_bit_flips_anywhere_are_refused_without_traceback(tmp_path):
    """1000 random single-bit flips over the header (length field included), the payload and the
    checksum: each is refused with an InputError naming the file (no KeyError, TypeError, ...)."""
    m, _, _ = synthetic_map(n_points=300, n_images=5)
    data = serialize_map(m)
    hlen = struct.unpack_from("<Q", data, 8)[0]
    regions = [(8, 16 + hlen), (16 + hlen, len(data) - 32), (len(data) - 32, len(data))]
    rng = np.random.default_rng(0)
    path = tmp_path / "flipped.segmap"
    for i in range(1000):
        lo, hi = regions[i % 3]
        pos = int(rng.integers(lo, hi))
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(damaged))
        with pytest.raises(InputError) as exc:
            load_map(path)
        assert str(path) in str(exc.value)
