"""Export trained weights to the ONNX inference graph (and a TensorRT engine where TensorRT exists).

`export_model(weights, config_yaml, out_onnx)` writes `<out>.onnx` plus its siblings `<out>.yaml`
and `<out>.pt`, so the result is a complete model for `segloc_core.net.infer.load_segmenter`. The graph
(`segloc_core.net.model.InferenceGraph`) takes float32 RGB (B,3,H,W) in 0..255 and returns per level the
softmax maps and the refiner's reductions, plus the GPO descriptor. The input size is fixed (the
config's, or `input_size`) unless `dynamic=True` (any H, W that are multiples of 16); the batch
axis is always dynamic. The model config and reduction names go into the ONNX metadata, which the
backends check against the YAML. With `check=True` the ONNX Runtime output is compared with
PyTorch's (probabilities within 1e-3) and a mismatch raises CheckFailed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from segloc_core.errors import CheckFailed, InputError, require
from segloc_core.net.model import InferenceGraph, ModelConfig, SegLocNet, load_state_dict, reduction_names

PARITY_TOL = 1e-3
OPSET = 17


def read_model_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read model config {path}: {exc}") from exc
    if "model" not in doc:
        raise InputError(f"{path} has no 'model' section (expected the model.yaml written by `segloc train`)")
    return doc


def export_model(weights: Path, config_yaml: Path, out_onnx: Path, input_size: tuple[int, int] | None = None,
                 dynamic: bool = False, check: bool = True, test_scales: tuple[float, ...] | None = None) -> Path:
    """Write out_onnx (+ .yaml, .pt siblings); returns the ONNX path. `test_scales` (None: the
    config's) sets `ModelConfig.test_scales`: the zooms the graph averages the finest probabilities over."""
    weights, config_yaml, out_onnx = Path(weights), Path(config_yaml), Path(out_onnx)
    doc = read_model_yaml(config_yaml)
    mdict = dict(doc["model"])
    if input_size is not None:
        mdict["input_width"], mdict["input_height"] = int(input_size[0]), int(input_size[1])
    if test_scales is not None:
        mdict["test_scales"] = list(test_scales)
    config = ModelConfig.from_dict(mdict)
    net = SegLocNet(config)
    load_state_dict(net, weights)
    reductions = reduction_names()
    graph = InferenceGraph(net, reductions).eval()
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, config.input_height, config.input_width) * 255
    axes = {"image": {0: "batch", **({2: "height", 3: "width"} if dynamic else {})}}
    axes.update({n: {0: "batch"} for n in InferenceGraph.output_names()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(graph, (x,), str(out_onnx), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=InferenceGraph.output_names(), dynamic_axes=axes, do_constant_folding=True)
    onnx = require("onnx")
    proto = onnx.load(str(out_onnx))
    meta = proto.metadata_props.add()
    meta.key = "segloc_model"
    meta.value = json.dumps({"model": config.to_dict(), "reductions": list(reductions), "dynamic_size": dynamic})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_onnx))
    out_yaml, out_pt = out_onnx.with_suffix(".yaml"), out_onnx.with_suffix(".pt")
    doc["model"] = config.to_dict()
    doc["reductions"] = list(reductions)
    out_yaml.write_text(yaml.safe_dump(doc, sort_keys=False))
    if out_pt.resolve() != weights.resolve():
        shutil.copyfile(weights, out_pt)
    if check:
        worst = parity(out_onnx)
        if worst > PARITY_TOL:
            raise CheckFailed(f"ONNX Runtime and PyTorch disagree on {out_onnx}: max |dp| = {worst:.2e} > {PARITY_TOL}")
    return out_onnx


def parity(model: Path, seed: int = 0) -> float:
    """Max |p_onnx - p_torch| over all levels' probabilities for a random image."""
    from segloc_core.net.infer import OrtSegmenter, TorchSegmenter, model_files

    files = model_files(model)
    img = np.random.default_rng(seed).integers(0, 256, (files.config.input_height, files.config.input_width, 3),
                                                dtype=np.uint8)
    a = OrtSegmenter(files).segment(img)
    b = TorchSegmenter(files).segment(img)
    return max(float(np.abs(la.probs - lb.probs).max()) for la, lb in zip(a.levels, b.levels))


def _run(args: argparse.Namespace) -> int:
    size = None
    if args.input_size:
        try:
            w, h = (int(v) for v in args.input_size.lower().split("x"))
        except ValueError as exc:
            raise InputError(f"--input-size must look like 320x240, got {args.input_size!r}") from exc
        size = (w, h)
    scales = None
    if args.test_scales is not None:
        try:
            scales = tuple(float(v) for v in args.test_scales.split(",") if v.strip())
        except ValueError as exc:
            raise InputError(f"--test-scales must be comma-separated zooms, e.g. 0.9,1.1, got {args.test_scales!r}") from exc
    config = args.config or Path(args.weights).with_name("model.yaml")
    out = export_model(args.weights, config, args.out, size, args.dynamic, check=not args.no_check, test_scales=scales)
    result = {"onnx": str(out), "config": str(out.with_suffix(".yaml")), "weights": str(out.with_suffix(".pt")),
              "onnx_bytes": out.stat().st_size}
    if args.tensorrt:
        from segloc_core.net.infer import tensorrt_engine

        result["tensorrt_engine"] = str(tensorrt_engine(out))
    print(json.dumps(result))
    return 0


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="state dict (model.pt from `segloc train`)")
    parser.add_argument("--config", type=Path, default=None, help="model.yaml (default: beside the weights)")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx (its .yaml/.pt siblings are written too)")
    parser.add_argument("--input-size", default=None, help="WxH, e.g. 640x480 (default: the config's)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic height/width axes")
    parser.add_argument("--test-scales", default=None,
                        help="comma-separated zooms (e.g. 0.8,0.9,1.1,1.25) whose finest probabilities the graph "
                             "averages with the image's own: more accurate fixes for 1 + n times the network's "
                             "cost ('' for none; default: the config's)")
    parser.add_argument("--tensorrt", action="store_true", help="also build the FP16 TensorRT engine (GPU + tensorrt)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch parity check")
    parser.set_defaults(func=_run)
