"""Image/CameraInfo <-> numpy/Camera: every supported encoding, padding, byte order, bad input."""

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import Image

from segloc_core.errors import InputError
from segloc_core.geometry import Camera
from segloc_ros.adapters.image_conversion import (
    camera_info_to_camera,
    camera_to_camera_info,
    image_to_numpy,
    image_to_rgb8,
    numpy_to_image,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding, pixels", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]), ("rgba8", np.dstack([RGB, np.full((6, 8), 7, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.zeros((6, 8), np.uint8)])),
    ("rgb16", RGB.astype(np.uint16) << 8), ("bgr16", (RGB[:, :, ::-1].astype(np.uint16) << 8) | 0x7F),
    ("8UC3", RGB[:, :, ::-1]),
])
def test_colour_encodings_give_rgb(encoding, pixels):
    msg = numpy_to_image(pixels, encoding)
    np.testing.assert_array_equal(image_to_numpy(msg), pixels)
    np.testing.assert_array_equal(image_to_rgb8(msg), RGB)


def test_mono_and_float_roundtrip():
    mono = RGB[:, :, 0]
    np.testing.assert_array_equal(image_to_rgb8(numpy_to_image(mono, "mono8")), np.dstack([mono] * 3))
    depth = RNG.random((6, 8)).astype(np.float32)
    np.testing.assert_array_equal(image_to_numpy(numpy_to_image(depth, "32FC1")), depth)
    with pytest.raises(InputError, match="not a camera image"):
        image_to_rgb8(numpy_to_image(depth, "32FC1"))


def test_big_endian_and_row_padding():
    values = RNG.integers(0, 65535, (4, 5), dtype=np.uint16)
    padded = np.zeros((4, 16), np.uint8)  # step 16 > 5 * 2 bytes
    padded[:, :10] = values.astype(">u2").view(np.uint8)
    msg = Image(height=4, width=5, encoding="mono16", is_bigendian=1, step=16,
                data=padded.tobytes())
    np.testing.assert_array_equal(image_to_numpy(msg), values)


def test_bayer_and_yuv():
    bayer = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)  # any mosaic works; check against OpenCV
    out = image_to_rgb8(numpy_to_image(bayer, "bayer_rggb8"))
    np.testing.assert_array_equal(out, cv2.cvtColor(bayer, cv2.COLOR_BayerBG2RGB))
    yuyv = RNG.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    out = image_to_rgb8(numpy_to_image(yuyv, "yuv422_yuy2"))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("msg, fragment", [
    (Image(height=6, width=8, encoding="rgb8", step=24, data=bytes(10)), r"expected step\*height"),
    (Image(height=6, width=8, encoding="rgb8", step=10, data=bytes(60)), "step 10 <"),
    (Image(height=6, width=8, encoding="jpeg", step=24, data=bytes(144)), "unsupported image encoding"),
    (Image(height=0, width=8, encoding="rgb8", step=24, data=b""), "empty image"),
])
def test_malformed_images_raise_clear_errors(msg, fragment):
    with pytest.raises(InputError, match=fragment):
        image_to_rgb8(msg)


def test_numpy_to_image_refuses_mismatch():
    with pytest.raises(InputError, match="does not match"):
        numpy_to_image(RGB.astype(np.float32), "rgb8")


def test_camera_info_roundtrip_shifts_pixel_centre():
    camera = Camera("OPENCV", 640, 480, np.array([500.0, 510.0, 320.0, 240.0, 0.1, -0.05, 1e-3, 2e-3]))
    info = camera_to_camera_info(camera)
    assert info.k[2] == pytest.approx(319.5) and info.k[5] == pytest.approx(239.5)
    back = camera_info_to_camera(info)
    assert back.model == "OPENCV"
    np.testing.assert_allclose(back.params, camera.params)
    pinhole = camera_info_to_camera(camera_to_camera_info(Camera("PINHOLE", 64, 48, [50, 50, 32, 24])))
    assert pinhole.model == "PINHOLE"


@pytest.mark.parametrize("mutate, fragment", [
    (lambda m: setattr(m, "k", [0.0] * 9), "not a calibration"),
    (lambda m: setattr(m, "distortion_model", "equidistant"), "unsupported"),
    (lambda m: setattr(m, "width", 0), "no image size"),
])
def test_bad_camera_info_raises(mutate, fragment):
    info = camera_to_camera_info(Camera("PINHOLE", 64, 48, [50, 50, 32, 24]))
    mutate(info)
    with pytest.raises(InputError, match=fragment):
        camera_info_to_camera(info)
