"""segloc_msgs/Segmentation <-> the library's segmentation output and refiner inputs.

Probabilities travel quantized to uint8 (p = q/255, at most 0.002 off), either dense (K x H x W)
or as the top-n classes per pixel with their ids. The per-pixel reductions over K travel in
float32 as computed by the network from the unquantized maps, so the refiner's S, G and max_k p_k
are exact on either encoding; top-n only zeroes p_y where y is not among a pixel's n best classes.
Unpacking is zero-copy where the layout allows (numpy views of the message buffers).
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

from segloc_core.errors import InputError
from segloc_core.geometry import Camera
from segloc_core.localize.refine import LevelInput
from segloc_core.reductions import REDUCTION_NAMES
from segloc_msgs.msg import ClassMapLevel, GlobalDescriptor, Segmentation


def _float_array(values: np.ndarray) -> array.array:
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def quantize(probs: np.ndarray) -> np.ndarray:
    """float probabilities in [0, 1] -> uint8 q = round(255 p)."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def pack_level(index: int, probs: np.ndarray, reductions: np.ndarray, encoding: str,
               top_n: int) -> ClassMapLevel:
    """One level (probs (K,H,W) float32, reductions (C,H,W) float32) as a ClassMapLevel."""
    K, H, W = probs.shape
    msg = ClassMapLevel(level=index, height=H, width=W, num_classes=K, encoding=encoding,
                        reduction_names=list(REDUCTION_NAMES))
    if encoding == ClassMapLevel.ENCODING_DENSE_U8:
        msg.data = array.array("B", quantize(probs).tobytes())
    elif encoding == ClassMapLevel.ENCODING_TOPN_U8:
        n = min(top_n, K)
        ids = np.argpartition(-probs, n - 1, axis=0)[:n] if n < K else \
            np.broadcast_to(np.arange(K)[:, None, None], probs.shape)
        msg.top_n = n
        msg.data = array.array("B", quantize(np.take_along_axis(probs, ids, axis=0)).tobytes())
        msg.class_ids = array.array("H", ids.astype(np.uint16).tobytes())
    else:
        raise InputError(f"unknown class map encoding {encoding!r}")
    msg.reductions = _float_array(reductions)
    return msg


def pack_segmentation(header: Header, camera_info: CameraInfo, result, encoding: str,
                      top_n: int) -> tuple[Segmentation, GlobalDescriptor]:
    """Segmentation message (and the descriptor on its own, for retrieval) of a SegmentationResult."""
    descriptor = GlobalDescriptor(header=header, model_hash=result.model_hash, whitened=False,
                                  data=_float_array(result.descriptor))
    msg = Segmentation(header=header, camera_info=camera_info, num_classes=result.K,
                       input_width=result.input_size[0], input_height=result.input_size[1],
                       model_hash=result.model_hash, descriptor=descriptor,
                       levels=[pack_level(i, lv.probs, lv.reductions, encoding, top_n)
                               for i, lv in enumerate(result.levels)])
    return msg, descriptor


def _buffer(values, dtype, count: int, what: str) -> np.ndarray:
    out = np.frombuffer(values, dtype=dtype)
    if out.size != count:
        raise InputError(f"{what}: {out.size} values, expected {count}")
    return out


def unpack_level(msg: ClassMapLevel, K: int, camera: Camera, input_wh: tuple[int, int] | None = None) -> LevelInput:
    """Refiner input of one level; `camera` is the source camera, taken here to the level (through
    the network's centred crop of an image of another aspect when input_wh, the network input
    size, is given); `K` the segmentation's classes (the level's own when it carries none)."""
    H, W = int(msg.height), int(msg.width)
    K_fine, K = K, int(msg.num_classes) or K
    if K_fine % K:
        raise InputError(f"level {msg.level}: {K} classes do not divide the segmentation's {K_fine} "
                         "(a coarse level carries parent labels)")
    if tuple(msg.reduction_names) != REDUCTION_NAMES:
        raise InputError(f"level {msg.level}: reductions {list(msg.reduction_names)} do not match "
                         f"the refiner's {list(REDUCTION_NAMES)} (model/refiner version mismatch)")
    reductions = _buffer(msg.reductions, np.float32, len(REDUCTION_NAMES) * H * W,
                         f"level {msg.level} reductions").reshape(-1, H, W)
    if msg.encoding == ClassMapLevel.ENCODING_DENSE_U8:
        probs = _buffer(msg.data, np.uint8, K * H * W, f"level {msg.level} probabilities")
        probs = probs.reshape(K, H, W)
    elif msg.encoding == ClassMapLevel.ENCODING_TOPN_U8:
        n = int(msg.top_n)
        values = _buffer(msg.data, np.uint8, n * H * W, f"level {msg.level} top-n values")
        ids = _buffer(msg.class_ids, np.uint16, n * H * W, f"level {msg.level} class ids")
        if ids.size and int(ids.max()) >= K:
            raise InputError(f"level {msg.level}: class id {int(ids.max())} >= K={K}")
        probs = np.zeros((K, H, W), np.uint8)
        np.put_along_axis(probs, ids.reshape(n, H, W).astype(np.intp), values.reshape(n, H, W),
                          axis=0)
    else:
        raise InputError(f"level {msg.level}: unknown encoding {msg.encoding!r}")
    level_camera = camera.network_view(input_wh, (W, H)) if input_wh else camera.scaled_to(W, H)
    return LevelInput(probs, reductions, level_camera)


def unpack_levels(msg: Segmentation, camera: Camera) -> list[LevelInput]:
    """All levels of a Segmentation message, coarse to fine, as refiner inputs."""
    if not msg.levels:
        raise InputError("segmentation message has no levels")
    input_wh = (int(msg.input_width), int(msg.input_height)) if msg.input_width and msg.input_height else None
    return [unpack_level(level, int(msg.num_classes), camera, input_wh) for level in msg.levels]
