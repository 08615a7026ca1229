"""Run the segmentation network: one `Segmenter` interface over TensorRT, ONNX Runtime and PyTorch.

A model is a set of sibling files with one stem: `<stem>.onnx` (inference graph, see
`segloc_core.net.model.InferenceGraph`), `<stem>.yaml` (model config: K, width, input size...) and
`<stem>.pt` (plain state dict). Every backend checks the files against the YAML (K, levels, input
size, reduction channels) and refuses a mismatch with an InputError naming the file.

`load_segmenter(path, backend="auto")`: `auto` takes the fastest available, in the order measured
by `segloc bench segment` on the targets: TensorRT (GPU, FP16) > ONNX Runtime with CUDA >
ONNX Runtime on CPU (faster than eager PyTorch on CPU here) > PyTorch.

Images of another size are resized to the model's input size (the level cameras follow:
`level_camera`), gray/RGBA are converted to RGB, float images in [0, 1] are scaled to 0..255;
anything else is refused with an InputError.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from segloc_core.errors import DependencyError, InputError, require
from segloc_core.geometry import Camera, aspect_crop
from segloc_core.net.model import InferenceGraph, ModelConfig, reduction_names
from segloc_core.paths import default_model_path, home
from segloc_core.place_labels import PlaceCells
from segloc_core.progress import progress_bar

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch")
ONNX_META_KEY = "segloc_model"  # ONNX metadata: {"model": ModelConfig dict, "reductions": [...]}


@dataclass(frozen=True)
class LevelMaps:
    """One level: probs (K,h,w) float32 softmax maps, reductions (C,h,w) float32 (REDUCTION_NAMES)."""

    probs: np.ndarray
    reductions: np.ndarray


@dataclass(frozen=True)
class SegmentationResult:
    levels: list[LevelMaps]  # coarse to fine
    descriptor: np.ndarray  # (M*K,) float32 raw GPO descriptor (before the map's PCA whitening)
    input_size: tuple[int, int]  # (w, h) the network ran at
    model_hash: str
    K: int


@dataclass(frozen=True)
class ModelFiles:
    onnx: Path
    config_yaml: Path
    weights: Path
    config: ModelConfig
    reductions: tuple[str, ...]

    def hash(self, backend: str) -> str:
        """The model hash a segmenter of `backend` reports, and a map built with it records: the
        ONNX file's for ONNX Runtime and TensorRT, the weights' and config's for PyTorch."""
        return file_hash(self.weights, self.config_yaml) if backend == "torch" else file_hash(self.onnx)


def model_files(model_path: Path | str | None = None) -> ModelFiles:
    """Resolve the sibling files of a model given any of them (default: the shipped model)."""
    path = Path(model_path) if model_path is not None else default_model_path()
    stem = path.with_suffix("")
    onnx, cfg_yaml, weights = stem.with_suffix(".onnx"), stem.with_suffix(".yaml"), stem.with_suffix(".pt")
    if not cfg_yaml.is_file():
        raise InputError(f"model config {cfg_yaml} not found (a model is <stem>.onnx/.pt/.yaml)")
    try:
        doc = yaml.safe_load(cfg_yaml.read_text()) or {}
        config = ModelConfig.from_dict(doc["model"])
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise InputError(f"{cfg_yaml} is not a segloc model config: {exc}") from exc
    return ModelFiles(onnx, cfg_yaml, weights, config, reduction_names())


def file_hash(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def prepare_image(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Any reasonable image -> (h,w,3) uint8 RGB at the model's input size, or an InputError. An
    image of another aspect ratio is cropped to the centred window of the input's aspect
    (`geometry.aspect_crop`; `Camera.network_view` is its camera), never stretched: a portrait
    photo squashed to 4:3 is 2.4x distorted."""
    if not isinstance(rgb, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(rgb).__name__}")
    img = rgb
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or min(img.shape[:2]) < 8:
        raise InputError(f"image must be (H,W), (H,W,3) or (H,W,4) with H,W >= 8, got shape {rgb.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        if img.dtype.kind == "f":
            if not np.isfinite(img).all() or img.min() < 0 or img.max() > 1:
                raise InputError("float images must be finite and in [0, 1] (convert 0..255 images to uint8)")
            img = np.round(img * 255).astype(np.uint8)
        elif img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            raise InputError(f"image dtype {rgb.dtype} not supported (use uint8, uint16 or float in [0, 1])")
    x0, y0, w, h = aspect_crop(img.shape[1], img.shape[0], size_wh)
    img = img[y0:y0 + h, x0:x0 + w]
    if (img.shape[1], img.shape[0]) != tuple(size_wh):
        from segloc_core.net.pairs import resize_image

        img = resize_image(np.ascontiguousarray(img), size_wh)[0]
    return np.ascontiguousarray(img)


class Segmenter(ABC):
    """Common front end; a backend implements `_run` on a float32 (B,3,H,W) batch."""

    backend: str

    def __init__(self, files: ModelFiles, model_hash: str):
        self.files, self.config, self.model_hash = files, files.config, model_hash
        self.K = files.config.num_classes
        # a geometry-label model names the place cells it predicts; map points then take their
        # label from their position (segloc_core.maps.build), not from a vote
        self.place_cells = PlaceCells.parse(files.config.place_cells) if files.config.place_cells else None
        self.input_size = (files.config.input_width, files.config.input_height)

    @abstractmethod
    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Outputs in `InferenceGraph.output_names()` order, each with a leading batch axis."""

    def level_size(self, level: int) -> tuple[int, int]:
        s = self.config.strides[level]
        return self.input_size[0] // s, self.input_size[1] // s

    def level_camera(self, camera: Camera, level: int) -> Camera:
        """Camera of level `level`'s maps for a frame taken with `camera` (any resolution and
        aspect: the network sees `prepare_image`'s centred crop)."""
        return camera.network_view(self.input_size, self.level_size(level))

    def segment(self, rgb: np.ndarray, frame: object = None) -> SegmentationResult:
        """Segment one image. `frame` names the frame for segmenters that read ground truth
        (`segloc_core.net.oracle`); a network sees only the pixels and ignores it."""
        return self.segment_many([rgb])[0]

    def segment_many(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        batch = np.stack([prepare_image(im, self.input_size) for im in images])
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        outs = self._run(batch)
        return [SegmentationResult(
            levels=[LevelMaps(outs[lv][b], outs[4 + lv][b]) for lv in range(4)],
            descriptor=outs[8][b], input_size=self.input_size, model_hash=self.model_hash, K=self.K)
            for b in range(len(images))]

    def segment_batch(self, images: Iterable[np.ndarray], batch_size: int = 4, progress: bool = True,
                      total: int | None = None) -> Iterator[SegmentationResult]:
        """Segment a stream of images (e.g. a map's database) in batches, with a progress bar."""
        buf: list[np.ndarray] = []
        with progress_bar(total=total, desc=f"segment ({self.backend})", enabled=progress, unit="img") as bar:
            for im in images:
                buf.append(im)
                if len(buf) == batch_size:
                    results = self.segment_many(buf)
                    bar.update(len(buf))
                    yield from results
                    buf = []
            if buf:
                results = self.segment_many(buf)
                bar.update(len(buf))
                yield from results


def _check_outputs(files: ModelFiles, shapes: list[tuple], source: Path) -> None:
    """Refuse a graph whose outputs disagree with the config (K, 4 levels, reductions, descriptor)."""
    cfg = files.config
    if len(shapes) != 9:
        raise InputError(f"{source} has {len(shapes)} outputs, a segloc graph has 9 (4 probs, 4 reductions, descriptor)")
    for lv in range(4):
        if shapes[lv][1] != cfg.num_classes:
            raise InputError(f"{source} level {lv} has {shapes[lv][1]} classes but {files.config_yaml} says K={cfg.num_classes}")
        if shapes[4 + lv][1] != len(files.reductions):
            raise InputError(f"{source} level {lv} has {shapes[4 + lv][1]} reduction channels, the refiner "
                             f"expects {len(files.reductions)} {files.reductions}; re-export the model")
    if shapes[8][1] != cfg.descriptor_dim:
        raise InputError(f"{source} descriptor has {shapes[8][1]} dims, config says {cfg.descriptor_dim}")


def _check_onnx_meta(files: ModelFiles, meta: dict[str, str]) -> None:
    if ONNX_META_KEY not in meta:
        raise InputError(f"{files.onnx} has no '{ONNX_META_KEY}' metadata: not exported by `segloc export`")
    doc = json.loads(meta[ONNX_META_KEY])
    if ModelConfig.from_dict(doc["model"]) != files.config:
        raise InputError(f"{files.onnx} was exported for model config {doc['model']}, which does not match "
                         f"{files.config_yaml} ({files.config.to_dict()})")
    if tuple(doc["reductions"]) != files.reductions:
        raise InputError(f"{files.onnx} outputs reductions {doc['reductions']}, the refiner expects "
                         f"{list(files.reductions)}; re-export the model")


class TorchSegmenter(Segmenter):
    backend = "torch"

    def __init__(self, files: ModelFiles, threads: int | None = None):
        import torch

        from segloc_core.net.model import SegLocNet, load_state_dict

        if not files.weights.is_file():
            raise InputError(f"weights {files.weights} not found")
        super().__init__(files, files.hash(self.backend))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)
        net = SegLocNet(files.config)
        load_state_dict(net, files.weights)
        self.graph = InferenceGraph(net, files.reductions).eval().to(self.device)

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            outs = self.graph(torch.from_numpy(batch).to(self.device))
        return [o.float().cpu().numpy() for o in outs]


class OrtSegmenter(Segmenter):
    backend = "onnxruntime"

    def __init__(self, files: ModelFiles, threads: int | None = None):
        ort = require("onnxruntime")
        if not files.onnx.is_file():
            raise InputError(f"ONNX model {files.onnx} not found (run `segloc export`)")
        super().__init__(files, files.hash(self.backend))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep instead of spinning: spinning doubled the CPU per frame
        # (105 -> 57 ms at 10 Hz, 320x240, 2 threads) for 2.6 ms of latency, CPU the refiner and
        # the other nodes need on a small machine
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # dynamic-size graphs log harmless buffer-reuse warnings
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(files.onnx), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors on corrupt files
            raise InputError(f"{files.onnx} is not a loadable ONNX model: {exc}") from exc
        self.providers = self.session.get_providers()
        _check_onnx_meta(files, self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        if isinstance(h, int) and isinstance(w, int) and (w, h) != self.input_size:
            raise InputError(f"{files.onnx} takes {w}x{h} images but {files.config_yaml} says {self.input_size}")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_names != InferenceGraph.output_names():
            raise InputError(f"{files.onnx} outputs {self.output_names}, expected {InferenceGraph.output_names()}")

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: batch})
        _check_outputs(self.files, [o.shape for o in outs], self.files.onnx)
        return outs


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason): TensorRT's Python API and a CUDA GPU (through torch) are both needed."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt Python package is not installed (NVIDIA GPU machines: pip install tensorrt)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
    return True, ""


def tensorrt_engine(onnx_path: Path, fp16: bool = True, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) a TensorRT engine for an ONNX model, cached by a hash of the ONNX bytes,
    the TensorRT version, the GPU name and the precision (an engine is only valid for all four)."""
    ok, why = tensorrt_available()
    if not ok:
        raise DependencyError(f"cannot build a TensorRT engine: {why}")
    import tensorrt as trt
    import torch

    key = file_hash(onnx_path, extra=f"{trt.__version__}|{torch.cuda.get_device_name(0)}|fp16={fp16}")
    cache = Path(cache_dir) if cache_dir else home() / "trt_cache"
    cache.mkdir(parents=True, exist_ok=True)
    engine_path = cache / f"{onnx_path.stem}-{key}.engine"
    if engine_path.is_file():
        return engine_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if any(d < 0 for d in shape):  # dynamic axes: optimise for batch 1..8 at the exported/config size
        profile = builder.create_optimization_profile()
        c, h, w = 3, shape[2] if shape[2] > 0 else 240, shape[3] if shape[3] > 0 else 320
        profile.set_shape(inp.name, (1, c, h, w), (1, c, h, w), (8, c, h, w))
        config.add_optimization_profile(profile)
    log.info("building TensorRT engine for %s (takes a while, cached at %s)", onnx_path, engine_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class TensorRTSegmenter(Segmenter):
    """TensorRT engine (FP16) with torch CUDA tensors as I/O buffers (TensorRT 10 tensor API)."""

    backend = "tensorrt"

    def __init__(self, files: ModelFiles, fp16: bool = True):
        import tensorrt as trt
        import torch

        if not files.onnx.is_file():
            raise InputError(f"ONNX model {files.onnx} not found (run `segloc export`)")
        import onnx

        _check_onnx_meta(files, {p.key: p.value for p in onnx.load(str(files.onnx), load_external_data=False).metadata_props})
        super().__init__(files, files.hash(self.backend))
        path = tensorrt_engine(files.onnx, fp16)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = InferenceGraph.output_names()

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        x = torch.from_numpy(batch).cuda()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        arrays = [o.cpu().numpy() for o in outs]
        _check_outputs(self.files, [a.shape for a in arrays], self.files.onnx)
        return arrays


def available_backends() -> list[str]:
    """Backends usable here, fastest first."""
    out = []
    if tensorrt_available()[0]:
        out.append("tensorrt")
    try:
        require("onnxruntime")
        out.append("onnxruntime")
    except DependencyError:
        pass
    out.append("torch")
    return out


def load_segmenter(model_path: Path | str | None = None, backend: str = "auto",
                   threads: int | None = None) -> Segmenter:
    """Open a model (default: the shipped one) with a backend ('auto' = fastest available)."""
    files = model_files(model_path)
    if backend == "auto":
        backend = available_backends()[0]
        if backend == "onnxruntime" and not files.onnx.is_file():
            backend = "torch"
    if backend == "tensorrt":
        ok, why = tensorrt_available()
        if not ok:
            raise DependencyError(f"backend 'tensorrt' unavailable: {why}")
        return TensorRTSegmenter(files)
    if backend == "onnxruntime":
        return OrtSegmenter(files, threads)
    if backend == "torch":
        return TorchSegmenter(files, threads)
    raise InputError(f"unknown backend {backend!r}; choose auto or one of {BACKENDS}")
