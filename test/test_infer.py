"""Export and inference backends: ONNX parity, bad input, mismatched model files, metrics, shipped model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from segloc_core.bench.segment import bench_segment
from segloc_core.errors import DependencyError, InputError
from segloc_core.eval import seg_metrics
from segloc_core.geometry import Camera, aspect_crop
from segloc_core.net.export import export_model, parity
from segloc_core.net.infer import (
    OrtSegmenter,
    TorchSegmenter,
    available_backends,
    load_segmenter,
    model_files,
    prepare_image,
    tensorrt_available,
)
from segloc_core.net.model import ModelConfig, SegLocNet
from segloc_core.paths import default_model_path
from segloc_core.reductions import REDUCTION_NAMES, level_reductions

SMALL = ModelConfig(num_classes=10, width=0.5, feature_dim=8, input_width=64, input_height=48)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A random small network exported to <tmp>/m.onnx (+ .yaml, .pt)."""
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    net = SegLocNet(SMALL)
    with torch.no_grad():  # sharper heads than at init, so parity is tested on peaked maps too
        for h in net.heads:
            h.weight.mul_(20)
    torch.save(net.state_dict(), d / "w.pt")
    (d / "w.yaml").write_text(yaml.safe_dump({"model": SMALL.to_dict()}))
    return export_model(d / "w.pt", d / "w.yaml", d / "m.onnx", check=False)


def test_onnx_matches_pytorch(small_model):
    assert parity(small_model) < 1e-3
    img = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a = OrtSegmenter(model_files(small_model)).segment(img)
    b = TorchSegmenter(model_files(small_model)).segment(img)
    assert np.abs(a.descriptor - b.descriptor).max() < 1e-3
    assert a.model_hash != b.model_hash  # hash of the file each backend actually runs
    for lv, (la, lb) in enumerate(zip(a.levels, b.levels)):
        assert la.probs.shape == (10, 48 // SMALL.strides[lv], 64 // SMALL.strides[lv])
        assert np.abs(la.reductions - lb.reductions).max() < 1e-3
        # the graph's reductions are the refiner's reference function on the graph's own probabilities
        assert la.reductions.shape[0] == len(REDUCTION_NAMES)
        assert np.allclose(la.reductions, level_reductions(la.probs), atol=1e-5)


def test_zoom_averaging_graph_exports_with_parity(small_model, tmp_path):
    """`segloc export --test-scales`: the zooms travel in the config and the ONNX metadata, and ONNX
    Runtime computes what PyTorch computes (grid sampling included)."""
    files = model_files(small_model)
    out = export_model(files.weights, files.config_yaml, tmp_path / "zoom.onnx", check=False, test_scales=(0.8, 1.25))
    zoom = model_files(out)
    assert zoom.config.test_scales == (0.8, 1.25)
    assert parity(out) < 1e-3
    img = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a, b = OrtSegmenter(zoom).segment(img), OrtSegmenter(files).segment(img)
    assert np.allclose(a.levels[3].probs.sum(0), 1, atol=1e-4)
    assert np.abs(a.levels[3].probs - b.levels[3].probs).max() > 1e-3  # the views are averaged in
    # with dynamic height/width the zoom grids follow the input size
    import onnxruntime as ort

    from segloc_core.net.model import InferenceGraph

    dyn = export_model(files.weights, files.config_yaml, tmp_path / "zoom_dyn.onnx", dynamic=True, check=False,
                       test_scales=(0.8, 1.25))
    net = SegLocNet(zoom.config).eval()
    net.load_state_dict(torch.load(files.weights, weights_only=True))
    x = np.random.default_rng(6).uniform(0, 255, (1, 3, 96, 128)).astype(np.float32)
    got = ort.InferenceSession(str(dyn), providers=["CPUExecutionProvider"]).run(["probs_3"], {"image": x})[0]
    with torch.no_grad():
        ref = InferenceGraph(net, REDUCTION_NAMES)(torch.from_numpy(x))[3].numpy()
    assert got.shape == (1, 10, 48, 64) and np.abs(got - ref).max() < 1e-3


def test_export_refuses_bad_test_scales_without_writing(small_model, tmp_path, capsys):
    from segloc_core.cli import main

    files = model_files(small_model)
    for bad, message in (("abc", "comma-separated zooms"), ("1.0,0.9", "other than 1")):
        out = tmp_path / f"bad_{len(bad)}.onnx"
        assert main(["export", "--weights", str(files.weights), "--config", str(files.config_yaml),
                     "--test-scales", bad, "--out", str(out)]) == 4
        assert message in capsys.readouterr().err and not out.exists()


def test_dynamic_size_export_runs_at_other_sizes(small_model, tmp_path):
    import onnxruntime as ort

    files = model_files(small_model)
    out = export_model(files.weights, files.config_yaml, tmp_path / "dyn.onnx", dynamic=True, check=False)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    net = SegLocNet(SMALL).eval()
    net.load_state_dict(torch.load(files.weights, weights_only=True))
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 96, 128)).astype(np.float32)
    probs = sess.run(["probs_3"], {"image": x})[0]
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x)).levels[3].logits, 1).numpy()
    assert probs.shape == (2, 10, 48, 64) and np.abs(probs - ref).max() < 1e-3


def test_input_conversion_and_rejection():
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert prepare_image(rgb, (64, 48)).shape == (48, 64, 3)
    assert prepare_image(rgb[:, :, 0], (64, 48)).shape == (48, 64, 3)  # gray
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(prepare_image(rgba, (128, 96)), rgb)
    assert np.array_equal(prepare_image(rgb / 255.0, (128, 96)), rgb)  # float in [0, 1]
    assert np.array_equal(prepare_image(rgb.astype(np.uint16) << 8, (128, 96)), rgb)
    for bad, msg in ((rgb.astype(np.float32), r"\[0, 1\]"), (rgb.astype(np.int32), "dtype"),
                     (np.zeros((4, 4, 3), np.uint8), "shape"), (np.zeros((10, 10, 5), np.uint8), "shape"),
                     ([[1, 2]], "numpy")):
        with pytest.raises(InputError, match=msg):
            prepare_image(bad, (64, 48))


def test_mismatched_model_files_are_refused(small_model, tmp_path):
    files = model_files(small_model)
    doc = yaml.safe_load(files.config_yaml.read_text())
    for key, value in (("num_classes", 11), ("input_width", 80)):
        stem = tmp_path / key
        stem.with_suffix(".onnx").write_bytes(files.onnx.read_bytes())
        stem.with_suffix(".pt").write_bytes(files.weights.read_bytes())
        stem.with_suffix(".yaml").write_text(yaml.safe_dump({**doc, "model": {**doc["model"], key: value}}))
        with pytest.raises(InputError, match="does not match|do not match"):
            load_segmenter(stem.with_suffix(".onnx"), "onnxruntime")
        if key == "num_classes":
            with pytest.raises(InputError, match="do not match"):
                load_segmenter(stem.with_suffix(".onnx"), "torch")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    (tmp_path / "junk.yaml").write_text(files.config_yaml.read_text())
    with pytest.raises(InputError, match="not a loadable ONNX"):
        load_segmenter(tmp_path / "junk.onnx", "onnxruntime")
    with pytest.raises(InputError, match="not found"):
        load_segmenter(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="unknown backend"):
        load_segmenter(small_model, "cuda")


def test_segmenter_api_batches_and_level_cameras(small_model):
    seg = load_segmenter(small_model)  # auto
    assert seg.backend == available_backends()[0] and seg.K == 10 and seg.input_size == (64, 48)
    imgs = [np.full((96, 128, 3), v, np.uint8) for v in (10, 120, 250)]
    results = list(seg.segment_batch(imgs, batch_size=2, progress=False))
    assert len(results) == 3 and results[0].descriptor.shape == (90,)
    single = seg.segment(imgs[2])
    assert np.allclose(single.levels[1].probs, results[2].levels[1].probs, atol=1e-5)
    cam = Camera("PINHOLE", 128, 96, np.array([100.0, 100.0, 64.0, 48.0]))
    c3 = seg.level_camera(cam, 3)
    assert (c3.width, c3.height) == results[0].levels[3].probs.shape[:0:-1] == (32, 24)
    assert np.allclose(c3.params, [25.0, 25.0, 16.0, 12.0])


def test_portrait_images_are_cropped_not_squashed(small_model):
    """Issue 14, defect 5: a 3:4 portrait photo was stretched to the 4:3 input (2.4x distortion).
    The network now sees the centred 4:3 window, and the level cameras say so: a world point lands
    on the same image content in the photo and in the network's input."""
    seg = load_segmenter(small_model)  # input 64x48
    rgb = np.random.default_rng(0).integers(0, 256, (640, 480, 3), dtype=np.uint8)  # W=480, H=640
    x0, y0, w, h = aspect_crop(480, 640, seg.input_size)
    assert (x0, y0, w, h) == (0, 140, 480, 360)
    seen = prepare_image(rgb, seg.input_size)
    from segloc_core.net.pairs import resize_image

    assert np.array_equal(seen, resize_image(np.ascontiguousarray(rgb[140:500]), (64, 48))[0])
    cam = Camera("PINHOLE", 480, 640, np.array([500.0, 500.0, 240.0, 320.0]))
    for level in range(4):
        lc = seg.level_camera(cam, level)
        (fx, fy), (lfx, lfy) = cam.focal, lc.focal
        assert lfx / lfy == pytest.approx(fx / fy)  # square pixels stay square
        X = np.array([[0.3, -0.2, 4.0], [-0.5, 0.4, 6.0]])
        uv, _ = cam.project(X)
        luv, _ = lc.project(X)
        assert np.allclose(luv, (uv - [x0, y0]) * [lc.width / w, lc.height / h], atol=1e-9)
    # an image with the input's aspect is used whole, as before
    assert aspect_crop(640, 480, seg.input_size) == (0, 0, 640, 480)


def test_tensorrt_backend():
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT backend not testable here: {why}")
    files = model_files(default_model_path())
    img = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    a = load_segmenter(files.onnx, "tensorrt").segment(img)
    b = load_segmenter(files.onnx, "onnxruntime").segment(img)
    assert max(np.abs(x.probs - y.probs).max() for x, y in zip(a.levels, b.levels)) < 2e-2  # FP16


def test_tensorrt_unavailable_is_a_dependency_error(small_model):
    if tensorrt_available()[0]:
        pytest.skip("TensorRT is available here")
    with pytest.raises(DependencyError, match="tensorrt"):
        load_segmenter(small_model, "tensorrt")


def test_bench_reports_every_backend(small_model, capsys):
    res = bench_segment(small_model, sizes=((64, 48), (128, 96)), repeats=1, threads=1)
    assert set(res["sizes"]) == {"64x48", "128x96"}
    for row in res["sizes"].values():
        assert all(row[b] > 0 for b in available_backends())


def test_retrieval_metrics_helpers():
    T = np.tile(np.eye(4), (3, 1, 1))
    T[1, 0, 3] = 3.0
    T[2, 0, 3] = 30.0
    ok = seg_metrics.pose_correct(T[:1], T)
    assert ok.tolist() == [[True, True, False]]
    q = np.array([[1.0, 0.0]])
    db = np.array([[0.0, 1.0], [0.8, 0.6], [1.0, 0.0]])
    assert seg_metrics.recall_at(q, db, np.array([[False, True, False]])) == {"r@1": 0.0, "r@5": 1.0}
    p = np.zeros((4, 2, 2), np.float32)
    p[1] = 1
    h = seg_metrics.class_histogram(p)
    assert np.allclose(h, [0, 1, 0, 0])
    t = seg_metrics.tiny_image(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert t.shape == (16 * 12 * 3,) and abs(np.linalg.norm(t) - 1) < 1e-5


def test_label_consistency_on_pairs(small_model):
    from segloc_core.net.pairs import synthetic_pairs

    ps = synthetic_pairs(3, (64, 48), 40, seed=0)
    by_pair, overall, entropy, far = seg_metrics.label_consistency(load_segmenter(small_model, "onnxruntime"), ps)
    assert list(by_pair) == ["a|b"] and len(overall) == 4
    assert all(0 <= v <= 1 for v in overall) and all(0 <= v <= 1 for v in entropy)
    # the synthetic pairs shift by at most 16 px: no correspondence is > 20 px apart, and the
    # aligned ones must not be reported as agreement
    assert all(np.isnan(v) for v in far)


def test_shipped_model():
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"no shipped model at {path} yet")
    files = model_files(path)
    assert files.config.num_classes == 100 and (files.config.input_width, files.config.input_height) == (320, 240)
    assert sum(p.stat().st_size for p in (files.onnx, files.weights, files.config_yaml)) <= 10e6
    seg = load_segmenter(path, "onnxruntime")
    res = seg.segment(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert [lv.probs.shape for lv in res.levels] == [(100, 15, 20), (100, 30, 40), (100, 60, 80), (100, 120, 160)]
    assert res.descriptor.shape == (900,)
    metrics = json.loads((path.parent / "segloc_default_metrics.json").read_text())
    assert metrics["model_hash"] == seg.model_hash  # the reported metrics belong to this file


def test_whitening_decorrelates_and_checks_dimensions():
    from segloc_core.descriptor import fit_whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)) @ rng.normal(size=(12, 12)) + 3.0
    w = fit_whitening(x, 6, shrinkage=0.0)
    y = (x - w.mean) @ w.projection
    assert np.allclose(np.cov(y.T), np.eye(6), atol=1e-6)
    assert np.allclose(np.linalg.norm(w.apply(x), axis=1), 1, atol=1e-5) and w.apply(x[0]).shape == (6,)
    assert fit_whitening(x[:5], 64).dim == 4  # capped at N - 1
    with pytest.raises(InputError, match="dimension"):
        w.apply(np.zeros((2, 5)))
