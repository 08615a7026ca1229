"""sensor_msgs/Image and CameraInfo <-> numpy / Camera, without cv_bridge (not on PyPI for ROS 2).

`image_to_numpy` returns the pixels in the message's own encoding (H, W[, C]) in native byte
order, honouring row padding (`step`) and `is_bigendian`; `image_to_rgb8` turns any colour, mono,
Bayer or YUV encoding into the (H, W, 3) uint8 RGB the network takes. Malformed messages (sizes
that do not add up, unknown encodings, images without colour for the network) raise `InputError`
with the reason, so a node can log it and skip the frame.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from segloc_core.errors import InputError
from segloc_core.geometry import Camera

# encoding -> (numpy dtype, channels); generic "8UC3" style encodings are parsed by _GENERIC.
_NAMED: dict[str, tuple[type, int]] = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "rgb16": (np.uint16, 3), "bgr16": (np.uint16, 3), "rgba16": (np.uint16, 4),
    "bgra16": (np.uint16, 4), "mono8": (np.uint8, 1), "mono16": (np.uint16, 1),
    "bayer_rggb8": (np.uint8, 1), "bayer_bggr8": (np.uint8, 1), "bayer_gbrg8": (np.uint8, 1),
    "bayer_grbg8": (np.uint8, 1), "bayer_rggb16": (np.uint16, 1), "bayer_bggr16": (np.uint16, 1),
    "bayer_gbrg16": (np.uint16, 1), "bayer_grbg16": (np.uint16, 1),
    # packed 4:2:2, two bytes per pixel
    "yuv422": (np.uint8, 2), "uyvy": (np.uint8, 2), "yuv422_yuy2": (np.uint8, 2),
    "yuyv": (np.uint8, 2),
}
_GENERIC = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
_GENERIC_DTYPES = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
                   "32S": np.int32, "32F": np.float32, "64F": np.float64}

# OpenCV's Bayer codes name the pattern of the second row; ROS names the first, hence the swap.
_BAYER_TO_RGB = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
                 "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}
_YUV_TO_RGB = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
               "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2}

SUPPORTED_ENCODINGS = tuple(_NAMED) + ("<8U|8S|16U|16S|32S|32F|64F>C<1-4>",)


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """Element dtype and channel count of a ROS image encoding; InputError if unknown."""
    if encoding in _NAMED:
        dtype, channels = _NAMED[encoding]
        return np.dtype(dtype), channels
    match = _GENERIC.match(encoding)
    if match:
        return np.dtype(_GENERIC_DTYPES[match.group(1)]), int(match.group(2))
    raise InputError(f"unsupported image encoding {encoding!r}; supported: "
                     f"{', '.join(SUPPORTED_ENCODINGS)}")


def image_to_numpy(msg: Image) -> np.ndarray:
    """Pixels of `msg` as (H, W) or (H, W, C) in its own encoding, native byte order.

    Returns a view of the message buffer when no byte swap is needed (no copy on the hot path).
    """
    dtype, channels = encoding_layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise InputError(f"empty image ({width}x{height}, encoding {msg.encoding})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise InputError(f"image step {step} < width*channels*bytes = {row_bytes} "
                         f"({width}x{height} {msg.encoding})")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise InputError(f"image data has {data.size} bytes, expected step*height = "
                         f"{step}*{height} = {step * height} ({msg.encoding})")
    rows = data.reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(wire) if dtype.itemsize > 1 else rows
    if dtype.itemsize > 1 and wire != dtype.newbyteorder("="):
        pixels = pixels.astype(dtype)  # byte swap to native
    return pixels.reshape((height, width) if channels == 1 else (height, width, channels))


def image_to_rgb8(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB for the network, from any colour, mono, Bayer or YUV encoding.

    16-bit images keep their 8 most significant bits. Depth/float images are not camera frames
    for the network and are refused.
    """
    pixels = image_to_numpy(msg)
    enc = msg.encoding
    if enc in _YUV_TO_RGB:
        return cv2.cvtColor(np.ascontiguousarray(pixels), _YUV_TO_RGB[enc])
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise InputError(f"encoding {enc!r} ({pixels.dtype}) is not a camera image the network "
                         "can take; expected 8/16-bit colour, mono, Bayer or YUV")
    if enc.startswith("bayer_"):
        return cv2.cvtColor(np.ascontiguousarray(pixels), _BAYER_TO_RGB[enc[6:10]])
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        return np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    if enc.startswith("rgb"):
        return np.ascontiguousarray(pixels[:, :, :3])
    if pixels.shape[2] >= 3:
        # bgr*, and generic nC3/nC4, which carry no channel order; ROS tools treat them as BGR(A)
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    raise InputError(f"encoding {enc!r} with {pixels.shape[2]} channels has no RGB meaning")


def numpy_to_image(pixels: np.ndarray, encoding: str, header=None) -> Image:
    """Build an Image message from (H, W[, C]) pixels that match `encoding` (no conversion)."""
    dtype, channels = encoding_layout(encoding)
    pixels = np.asarray(pixels)
    expected_channels = 2 if encoding in _YUV_TO_RGB else channels
    got_channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.dtype != dtype or got_channels != expected_channels or pixels.ndim not in (2, 3):
        raise InputError(f"array {pixels.shape} {pixels.dtype} does not match encoding "
                         f"{encoding!r} ({expected_channels} x {dtype})")
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0 if np.little_endian else 1
    msg.step = int(pixels.shape[1] * expected_channels * dtype.itemsize)
    msg.data = pixels.reshape(-1).view(np.uint8).tobytes()
    return msg


def camera_info_to_camera(msg: CameraInfo) -> Camera:
    """Camera (COLMAP pixel convention) of a CameraInfo (ROS/OpenCV convention, +0.5 px shift).

    Supports plumb_bob / rational_polynomial with k3 (and beyond) zero, i.e. COLMAP's OPENCV model;
    other models, an all-zero K or a non-positive size raise InputError.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if msg.width == 0 or msg.height == 0:
        raise InputError(f"CameraInfo has no image size ({msg.width}x{msg.height})")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"CameraInfo K is not a calibration (fx, fy must be > 0): {K.tolist()}")
    model = msg.distortion_model or "plumb_bob"
    if model not in ("plumb_bob", "rational_polynomial"):
        raise InputError(f"distortion model {model!r} unsupported; rectify the image first or "
                         "use plumb_bob")
    dist = np.asarray(msg.d, dtype=np.float64)
    return Camera.from_opencv_K(K, int(msg.width), int(msg.height), dist if dist.size else None)


def camera_to_camera_info(camera: Camera, header=None) -> CameraInfo:
    """CameraInfo (ROS/OpenCV convention) of a Camera; plumb_bob distortion, identity R."""
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = camera.width, camera.height
    K = camera.to_opencv_K()
    msg.distortion_model = "plumb_bob"
    msg.d = [float(x) for x in camera.distortion] + [0.0]
    msg.k = K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([K, np.zeros((3, 1))]).reshape(-1).tolist()
    return msg
