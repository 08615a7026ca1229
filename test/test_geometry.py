"""Pose algebra, camera models and their analytic Jacobians against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose, jacobian_left_update, pose_error

CAMERAS = [
    Camera("PINHOLE", 640, 480, [500.0, 510.0, 320.0, 240.0]),
    Camera("SIMPLE_RADIAL", 640, 480, [500.0, 321.0, 239.0, -0.08]),
    Camera("RADIAL", 640, 480, [500.0, 321.0, 239.0, -0.08, 0.01]),
    Camera("OPENCV", 640, 480, [500.0, 510.0, 320.0, 240.0, -0.1, 0.02, 0.001, -0.002]),
]


def _points(rng: np.random.Generator, n: int = 50) -> np.ndarray:
    return np.c_[rng.uniform(-0.8, 0.8, (n, 2)), rng.uniform(2.0, 6.0, n)]


def test_exp_log_roundtrip_and_algebra():
    rng = np.random.default_rng(0)
    for _ in range(20):
        xi = rng.normal(size=6)
        xi[3:] *= 0.9  # rotation angle below pi
        T = Pose.exp(xi)
        np.testing.assert_allclose(T.log(), xi, atol=1e-10)
        np.testing.assert_allclose((T @ T.inv()).matrix(), np.eye(4), atol=1e-12)
        np.testing.assert_allclose(Pose.from_matrix(T.matrix()).matrix(), T.matrix())
        np.testing.assert_allclose(Pose.from_quat_xyzw(T.quat_xyzw(), T.t).R, T.R, atol=1e-12)
    # composition order: (T_a_b @ T_b_c) maps c -> a
    A, B = Pose.exp(rng.normal(size=6)), Pose.exp(rng.normal(size=6))
    x = rng.normal(size=(5, 3))
    np.testing.assert_allclose((A @ B).transform(x), A.transform(B.transform(x)), atol=1e-12)
    # pure translation twist is the translation itself
    np.testing.assert_allclose(Pose.exp([1.0, 2.0, 3.0, 0, 0, 0]).t, [1.0, 2.0, 3.0])
    # small-angle branch agrees with the closed form just above it
    np.testing.assert_allclose(Pose.exp([0.1, 0, 0, 1e-6, 0, 0]).R, Pose.exp([0.1, 0, 0, 1.1e-5, 0, 0]).R,
                               atol=1e-4)


def test_interpolate_and_pose_error():
    A = Pose.identity()
    B = Pose.from_rotvec([0.0, 0.0, 0.4], [2.0, 0.0, 0.0])
    assert pose_error(A.interpolate(B, 0.0), A) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert pose_error(A.interpolate(B, 1.0), B) == pytest.approx((0.0, 0.0), abs=1e-9)
    mid = A.interpolate(B, 0.5)
    np.testing.assert_allclose(mid.rotvec(), [0, 0, 0.2], atol=1e-12)
    np.testing.assert_allclose(mid.t, [1.0, 0, 0])
    dt, dr = pose_error(B, A)
    assert dr == pytest.approx(np.degrees(0.4))
    assert dt == pytest.approx(np.linalg.norm(B.center()))


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_project_unproject_roundtrip(cam: Camera):
    p = _points(np.random.default_rng(1))
    uv, valid = cam.project(p)
    assert valid.all()
    np.testing.assert_allclose(cam.unproject(uv) * p[:, 2:], p, atol=1e-9)


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_projection_jacobian_matches_finite_differences(cam: Camera):
    p = _points(np.random.default_rng(2))
    _, _, J = cam.project_with_jacobian(p)
    eps = 1e-6
    Jn = np.stack([(cam.project(p + eps * e)[0] - cam.project(p - eps * e)[0]) / (2 * eps)
                   for e in np.eye(3)], axis=-1)
    np.testing.assert_allclose(J, Jn, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cam", CAMERAS, ids=lambda c: c.model)
def test_pixel_jacobian_wrt_left_update(cam: Camera):
    """d uv / d xi = d uv / d p_cam @ d p_cam / d xi, checked through Pose.exp."""
    rng = np.random.default_rng(3)
    x_world = _points(rng, 20)
    T = Pose.exp(np.r_[0.1, -0.2, 0.05, 0.02, -0.03, 0.01])
    p = T.transform(x_world)
    _, _, Juv = cam.project_with_jacobian(p)
    J = Juv @ jacobian_left_update(p)
    eps = 1e-6
    cols = []
    for e in np.eye(6):
        plus = cam.project((Pose.exp(eps * e) @ T).transform(x_world))[0]
        minus = cam.project((Pose.exp(-eps * e) @ T).transform(x_world))[0]
        cols.append((plus - minus) / (2 * eps))
    np.testing.assert_allclose(J, np.stack(cols, axis=-1), rtol=1e-5, atol=1e-4)


def test_validity_behind_and_outside():
    cam = CAMERAS[0]
    uv, valid = cam.project(np.array([[0, 0, 2.0], [0, 0, -2.0], [50.0, 0, 1.0], [0, 0, 0.0]]))
    assert valid.tolist() == [True, False, False, False]
    np.testing.assert_allclose(uv[0], [320.0, 240.0])


def test_scaling_and_pixel_convention():
    rng = np.random.default_rng(4)
    p = _points(rng)
    for cam in CAMERAS:
        half = cam.scaled(0.5)
        assert (half.width, half.height) == (320, 240)
        np.testing.assert_allclose(half.project(p)[0], cam.project(p)[0] * 0.5, atol=1e-9)
        # anisotropic: single-focal models become the equivalent OPENCV camera
        aniso = cam.scaled_to(320, 120)
        np.testing.assert_allclose(aniso.project(p)[0], cam.project(p)[0] * [0.5, 0.25], atol=1e-9)
    # the image centre is (W/2, H/2) in COLMAP's convention, (W-1)/2 in OpenCV's
    cam = Camera.from_opencv_K(np.array([[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1.0]]), 640, 480)
    assert cam.model == "PINHOLE"
    np.testing.assert_allclose(cam.principal_point, (320.0, 240.0))
    np.testing.assert_allclose(cam.to_opencv_K()[:2, 2], (319.5, 239.5))
    dist = Camera.from_opencv_K(cam.to_opencv_K(), 640, 480, [-0.1, 0.02, 0.001, -0.002, 0.0])
    assert dist.model == "OPENCV"
    np.testing.assert_allclose(dist.distortion, [-0.1, 0.02, 0.001, -0.002])


def test_bad_camera_and_pose_input():
    with pytest.raises(InputError, match="unsupported"):
        Camera("FISHEYE", 10, 10, [1, 2, 3, 4])
    with pytest.raises(InputError, match="PINHOLE camera needs 4"):
        Camera("PINHOLE", 10, 10, [1, 2, 3])
    with pytest.raises(InputError, match="finite"):
        Camera("PINHOLE", 10, 10, [1, np.nan, 3, 4])
    with pytest.raises(InputError):
        Pose.from_matrix(np.eye(3))
    with pytest.raises(InputError):
        Pose.exp(np.zeros(5))
    assert not Pose(np.eye(3), [np.nan, 0, 0]).is_finite()


def test_adjoint_moves_a_left_perturbation_through_the_pose():
    T = Pose.from_rotvec([0.1, -0.2, 0.3], [1.0, 2.0, 3.0])
    xi = np.array([0.01, 0.02, -0.01, 0.003, -0.002, 0.001])
    np.testing.assert_allclose((T @ Pose.exp(xi)).matrix(),
                               (Pose.exp(T.adjoint() @ xi) @ T).matrix(), atol=1e-12)
