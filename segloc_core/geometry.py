"""Geometry vocabulary: rigid transforms (`Pose`) and COLMAP camera models (`Camera`).

Conventions live in names, not comments elsewhere:
- `T_a_b` maps points from frame b into frame a: x_a = R x_b + t. Camera poses are `T_cam_world`
  (world -> camera, OpenCV optical frame: x right, y down, z forward) or `T_world_cam`.
- Twists xi (6,) = [rho (3), omega (3)]: rho the translation part, omega a rotation vector (rad).
  `Pose.exp` is the true SE(3) exponential (t = V(omega) rho); for a pure translation rho = t.
  Optimizers use the *left* update T <- exp(xi) @ T, whose Jacobian at xi = 0 on a transformed point
  p = T x is d p / d xi = [I, -[p]_x] (`jacobian_left_update`).
- Pixel convention: COLMAP's. The centre of the top-left pixel is at (0.5, 0.5), the image spans
  [0, width] x [0, height]; OpenGL agrees. OpenCV / ROS CameraInfo put that centre at (0, 0):
  convert intrinsics with `Camera.from_opencv_K` / `Camera.to_opencv_K` (cx_colmap = cx_opencv + 0.5).
  With this convention, scaling an image by s scales fx, fy, cx, cy by s exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from segloc_core.errors import InputError

_SMALL_ANGLE = 1e-8


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices [v]_x, batched: (..., 3) -> (..., 3, 3)."""
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def _so3_left_jacobian(omega: np.ndarray) -> np.ndarray:
    """V(omega) of the SE(3) exponential: t = V rho (Taylor series near zero angle)."""
    theta = float(np.linalg.norm(omega))
    W = skew(omega)
    if theta < 1e-5:
        return np.eye(3) + 0.5 * W + W @ W / 6.0
    a = (1.0 - np.cos(theta)) / theta**2
    b = (theta - np.sin(theta)) / theta**3
    return np.eye(3) + a * W + b * (W @ W)


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (cheaper than scipy for one small vector in a loop)."""
    theta = float(np.linalg.norm(omega))
    W = skew(omega)
    if theta < 1e-5:
        return np.eye(3) + W + 0.5 * (W @ W)
    return np.eye(3) + (np.sin(theta) / theta) * W + ((1.0 - np.cos(theta)) / theta**2) * (W @ W)


def _as_rotation_matrix(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise InputError(f"rotation must be (3, 3), got {R.shape}")
    return R


@dataclass(frozen=True)
class Pose:
    """Rigid transform T_a_b: x_a = R @ x_b + t. R (3,3) float64 rotation, t (3,) float64 metres."""

    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        if t.shape != (3,):
            raise InputError(f"translation must have 3 elements, got shape {np.shape(self.t)}")
        object.__setattr__(self, "R", _as_rotation_matrix(self.R))
        object.__setattr__(self, "t", t)

    # construction -------------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> Pose:
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_matrix(cls, T: np.ndarray) -> Pose:
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4):
            raise InputError(f"pose matrix must be (4, 4), got {T.shape}")
        return cls(T[:3, :3].copy(), T[:3, 3].copy())

    @classmethod
    def from_quat_xyzw(cls, q: np.ndarray, t: np.ndarray) -> Pose:
        """From a unit quaternion in ROS / scipy order (x, y, z, w) and a translation."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-12:
            raise InputError(f"quaternion must be 4 finite, non-zero numbers (x, y, z, w), got {q}")
        return cls(Rotation.from_quat(q).as_matrix(), t)

    @classmethod
    def from_rotvec(cls, rotvec: np.ndarray, t: np.ndarray) -> Pose:
        return cls(Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_matrix(), t)

    @classmethod
    def exp(cls, xi: np.ndarray) -> Pose:
        """SE(3) exponential of xi = [rho, omega] (see module docstring)."""
        xi = np.asarray(xi, dtype=np.float64).reshape(-1)
        if xi.shape != (6,):
            raise InputError(f"twist must have 6 elements [rho, omega], got shape {xi.shape}")
        rho, omega = xi[:3], xi[3:]
        return cls(_rodrigues(omega), _so3_left_jacobian(omega) @ rho)

    # conversion ---------------------------------------------------------------------------------
    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    def quat_xyzw(self) -> np.ndarray:
        return Rotation.from_matrix(self.R).as_quat()

    def rotvec(self) -> np.ndarray:
        return Rotation.from_matrix(self.R).as_rotvec()

    def log(self) -> np.ndarray:
        """Inverse of `exp`: xi = [rho, omega] with exp(xi) == self."""
        omega = self.rotvec()
        return np.concatenate([np.linalg.solve(_so3_left_jacobian(omega), self.t), omega])

    # algebra ------------------------------------------------------------------------------------
    def inv(self) -> Pose:
        return Pose(self.R.T, -self.R.T @ self.t)

    def adjoint(self) -> np.ndarray:
        """(6,6) Ad with self @ exp(xi) == exp(Ad xi) @ self, for xi = [rho, omega]: moves a
        covariance of a left perturbation through a composition (Ad C Ad^T)."""
        Ad = np.zeros((6, 6))
        Ad[:3, :3] = Ad[3:, 3:] = self.R
        tx, ty, tz = self.t
        Ad[:3, 3:] = np.array([[0.0, -tz, ty], [tz, 0.0, -tx], [-ty, tx, 0.0]]) @ self.R
        return Ad

    def __matmul__(self, other: Pose) -> Pose:
        """Composition: (T_a_b @ T_b_c) = T_a_c."""
        if not isinstance(other, Pose):
            return NotImplemented
        return Pose(self.R @ other.R, self.R @ other.t + self.t)

    def transform(self, pts: np.ndarray) -> np.ndarray:
        """Map points (N,3) (or (3,)) from frame b to frame a."""
        pts = np.asarray(pts, dtype=np.float64)
        return pts @ self.R.T + self.t

    def interpolate(self, other: Pose, alpha: float) -> Pose:
        """Rotation by slerp, translation linearly; alpha=0 gives self, 1 gives other.

        For T_world_cam poses this moves the camera centre on a straight line (what odometry
        interpolation between timestamps wants).
        """
        rots = Rotation.from_matrix(np.stack([self.R, other.R]))
        R = Slerp([0.0, 1.0], rots)([float(alpha)]).as_matrix()[0]
        return Pose(R, (1.0 - alpha) * self.t + alpha * other.t)

    def is_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.R)) and np.all(np.isfinite(self.t)))

    def center(self) -> np.ndarray:
        """For T_cam_world: the camera centre in world coordinates (-R^T t)."""
        return -self.R.T @ self.t

    def __repr__(self) -> str:
        return f"Pose(rotvec={np.round(self.rotvec(), 5).tolist()}, t={np.round(self.t, 5).tolist()})"


# median scene depth of the default world's map (23.2 m, `segloc map info`), on which the localizer's
# distances and the place cells of the shipped model were chosen
REFERENCE_SCENE_DEPTH_M = 23.0


def distance_scale(units: str, scene_depth: float) -> float:
    """1 for a metric map; else its scene depth over REFERENCE_SCENE_DEPTH_M: distances chosen in
    metres on the default world (search radii, gates, place-cell sizes) get the same size relative
    to a reconstruction of unknown scale (structure from motion)."""
    return 1.0 if units == "m" or scene_depth <= 0 else scene_depth / REFERENCE_SCENE_DEPTH_M


def pose_error(T_cam_world_est: Pose, T_cam_world_gt: Pose) -> tuple[float, float]:
    """(camera-centre distance in metres, rotation angle in degrees) between two camera poses."""
    dt = float(np.linalg.norm(T_cam_world_est.center() - T_cam_world_gt.center()))
    dR = T_cam_world_est.R @ T_cam_world_gt.R.T
    cos = np.clip((np.trace(dR) - 1.0) / 2.0, -1.0, 1.0)
    return dt, float(np.degrees(np.arccos(cos)))


def jacobian_left_update(p: np.ndarray) -> np.ndarray:
    """d p / d xi at xi = 0 for p' = exp(xi) p (left update), batched: (N,3) -> (N,3,6) = [I, -[p]_x]."""
    p = np.asarray(p, dtype=np.float64)
    J = np.zeros(p.shape[:-1] + (3, 6))
    J[..., 0, 0] = J[..., 1, 1] = J[..., 2, 2] = 1.0
    J[..., 3:] = -skew(p)
    return J


# ------------------------------------------------------------------------------------------------
# Cameras

# model -> (parameter names in COLMAP order)
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}

MIN_DEPTH = 1e-3  # metres; points closer to (or behind) the camera plane are not projected


def aspect_crop(width: int, height: int, aspect_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, w, h): the largest centred window of a width x height image with the aspect ratio
    aspect_wh (e.g. a network's 320x240 input), so an image of another shape (a portrait photo) is
    cropped to what the network can see undistorted instead of stretched. The whole image when its
    aspect is already that within a pixel."""
    target = aspect_wh[0] / aspect_wh[1]
    w, h = min(width, round(height * target)), min(height, round(width / target))
    if abs(w - width) <= 1 and abs(h - height) <= 1:
        return 0, 0, width, height
    return (width - w) // 2, (height - h) // 2, w, h


@dataclass(frozen=True)
class Camera:
    """A COLMAP camera: model name, image size in pixels and parameters in COLMAP order.

    Pixel convention: COLMAP's (top-left pixel centre at (0.5, 0.5)); see the module docstring.
    """

    model: str
    width: int
    height: int
    params: np.ndarray

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise InputError(f"camera model {self.model!r} unsupported; use one of {list(CAMERA_MODELS)}")
        params = np.asarray(self.params, dtype=np.float64).reshape(-1)
        names = CAMERA_MODELS[self.model]
        if params.shape != (len(names),) or not np.all(np.isfinite(params)):
            raise InputError(f"{self.model} camera needs {len(names)} finite params {names}, "
                             f"got {self.params}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise InputError(f"camera size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    # intrinsics ---------------------------------------------------------------------------------
    @property
    def focal(self) -> tuple[float, float]:
        p = self.params
        return (p[0], p[0]) if self.model in ("SIMPLE_RADIAL", "RADIAL") else (p[0], p[1])

    @property
    def principal_point(self) -> tuple[float, float]:
        p = self.params
        return (p[1], p[2]) if self.model in ("SIMPLE_RADIAL", "RADIAL") else (p[2], p[3])

    @property
    def distortion(self) -> np.ndarray:
        """OpenCV-order coefficients (k1, k2, p1, p2) equivalent to this model's distortion."""
        p = self.params
        if self.model == "PINHOLE":
            return np.zeros(4)
        if self.model == "SIMPLE_RADIAL":
            return np.array([p[3], 0.0, 0.0, 0.0])
        if self.model == "RADIAL":
            return np.array([p[3], p[4], 0.0, 0.0])
        return p[4:8].copy()

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsics in COLMAP's pixel convention (see `to_opencv_K` for OpenCV's)."""
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    def to_opencv_K(self) -> np.ndarray:
        """3x3 intrinsics in OpenCV / ROS CameraInfo convention (top-left pixel centre at (0, 0))."""
        K = self.K
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        return K

    @classmethod
    def from_opencv_K(cls, K: np.ndarray, width: int, height: int,
                      dist: np.ndarray | None = None) -> Camera:
        """From OpenCV / ROS intrinsics (and optional plumb-bob k1 k2 p1 p2 [k3=0]) to COLMAP.

        Returns PINHOLE without distortion, else OPENCV; a non-zero k3 or beyond is refused.
        """
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise InputError(f"K must be 3x3, got {K.shape}")
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5
        d = np.zeros(4) if dist is None else np.asarray(dist, dtype=np.float64).reshape(-1)
        if d.size < 4 and d.size != 0:
            raise InputError(f"distortion needs k1 k2 p1 p2 (got {d.size} values)")
        if d.size > 4 and np.any(d[4:] != 0):
            raise InputError(f"distortion terms beyond k1 k2 p1 p2 are not supported: {d}")
        d = d[:4] if d.size else np.zeros(4)
        if not np.any(d):
            return cls("PINHOLE", width, height, np.array([fx, fy, cx, cy]))
        return cls("OPENCV", width, height, np.array([fx, fy, cx, cy, *d]))

    def scaled(self, sx: float, sy: float | None = None) -> Camera:
        """The camera of the image resized by (sx, sy): width*sx x height*sy pixels.

        Exact under COLMAP's pixel convention. A single-focal model resized anisotropically becomes
        the equivalent OPENCV camera (no approximation).
        """
        sy = sx if sy is None else sy
        if not (sx > 0 and sy > 0):
            raise InputError(f"scale factors must be positive, got {sx}, {sy}")
        width, height = int(round(self.width * sx)), int(round(self.height * sy))
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        p = self.params.copy()
        if self.model in ("SIMPLE_RADIAL", "RADIAL"):
            if abs(sx - sy) <= 1e-9 * max(sx, sy):
                p[:3] = [fx * sx, cx * sx, cy * sy]
                return Camera(self.model, width, height, p)
            return Camera("OPENCV", width, height,
                          np.array([fx * sx, fy * sy, cx * sx, cy * sy, *self.distortion]))
        p[:4] = [fx * sx, fy * sy, cx * sx, cy * sy]
        return Camera(self.model, width, height, p)

    def scaled_to(self, width: int, height: int) -> Camera:
        """The camera of the whole image resized to exactly width x height (e.g. a feature level)."""
        return self.scaled(width / self.width, height / self.height)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> Camera:
        """The camera of the window [x0, x0 + width) x [y0, y0 + height) of its image."""
        p = self.params.copy()
        i = 1 if self.model in ("SIMPLE_RADIAL", "RADIAL") else 2  # index of cx
        p[i:i + 2] -= (x0, y0)
        return Camera(self.model, width, height, p)

    def network_view(self, input_wh: tuple[int, int], level_wh: tuple[int, int] | None = None) -> Camera:
        """The camera of what a network with input size input_wh sees of this camera's image (the
        `aspect_crop` window resized to the input), or of one of its levels (level_wh)."""
        return self.cropped(*aspect_crop(self.width, self.height, input_wh)).scaled_to(*(level_wh or input_wh))

    # distortion on normalized coordinates ---------------------------------------------------------
    def _distort(self, x: np.ndarray, y: np.ndarray, with_jacobian: bool = False):
        """Normalized -> distorted normalized (xd, yd) [and d(xd, yd)/d(x, y) as (j00, j01, j10, j11)]."""
        k1, k2, p1, p2 = self.distortion
        r2 = x * x + y * y
        radial = k1 * r2 + k2 * r2 * r2
        xd = x + x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y + y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
        if not with_jacobian:
            return xd, yd, None
        drad = k1 + 2 * k2 * r2  # d radial / d r2
        cross = 2 * x * y * drad
        return xd, yd, (1 + radial + 2 * x * x * drad + 2 * p1 * y + 6 * p2 * x,
                        cross + 2 * p1 * x + 2 * p2 * y,
                        cross + 2 * p2 * y + 2 * p1 * x,
                        1 + radial + 2 * y * y * drad + 2 * p2 * x + 6 * p1 * y)

    def _undistort(self, xd: np.ndarray, yd: np.ndarray, iterations: int = 20):
        """Invert `_distort` by Newton iterations (batched), as COLMAP's IterativeUndistortion."""
        x, y = xd.copy(), yd.copy()
        if self.model == "PINHOLE":
            return x, y
        for _ in range(iterations):
            fx_, fy_, (a, b, c, d) = self._distort(x, y, with_jacobian=True)
            rx, ry = fx_ - xd, fy_ - yd
            det = a * d - b * c
            sx, sy = (d * rx - b * ry) / det, (a * ry - c * rx) / det
            x -= sx
            y -= sy
            if max(np.max(np.abs(sx), initial=0.0), np.max(np.abs(sy), initial=0.0)) < 1e-12:
                break
        return x, y

    # projection ---------------------------------------------------------------------------------
    def in_image(self, uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Pixel coordinates within [margin, size - margin] (COLMAP convention)."""
        return ((uv[:, 0] >= margin) & (uv[:, 0] <= self.width - margin)
                & (uv[:, 1] >= margin) & (uv[:, 1] <= self.height - margin))

    def project(self, p_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame points (N,3) -> pixels uv (N,2), valid (N,): in front and inside the image.

        Invalid points still get (finite where possible) coordinates; callers must mask them.
        """
        uv, valid, _ = self.project_with_jacobian(p_cam, with_jacobian=False)
        return uv, valid

    def project_with_jacobian(self, p_cam: np.ndarray, with_jacobian: bool = True):
        """As `project`, plus d uv / d p_cam (N,2,3) (None when with_jacobian is False)."""
        p = np.asarray(p_cam, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 3:
            raise InputError(f"points must be (N, 3), got {p.shape}")
        uv_t, front, J_t = self.project_columns(np.ascontiguousarray(p.T), with_jacobian)
        uv = uv_t.T
        with np.errstate(invalid="ignore"):
            valid = front & self.in_image(uv)
        return uv, valid, (None if J_t is None else J_t.transpose(2, 0, 1))

    def project_columns(self, p_cam_t: np.ndarray, with_jacobian: bool = True):
        """Column layout of `project_with_jacobian` for inner loops: p_cam_t (3,N) ->
        (uv_t (2,N), in front (N,) (image bounds NOT checked), d uv / d p_cam (2,3,N) or None)."""
        X, Y, Z = p_cam_t
        front = Z > MIN_DEPTH
        inv_z = 1.0 / np.where(front, Z, 1.0)
        x, y = X * inv_z, Y * inv_z
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        distorted = self.model != "PINHOLE"
        xd, yd, Jd = self._distort(x, y, with_jacobian) if distorted else (x, y, None)
        uv = np.empty((2, len(Z)))
        np.multiply(xd, fx, out=uv[0])
        uv[0] += cx
        np.multiply(yd, fy, out=uv[1])
        uv[1] += cy
        if not with_jacobian:
            return uv, front, None
        # d(x, y)/d p = [[1/z, 0, -x/z], [0, 1/z, -y/z]], then distortion, then focal
        J = np.zeros((2, 3, len(Z)))
        if distorted:
            a, b, c, d = Jd
            J[0, 0], J[0, 1], J[0, 2] = a * inv_z, b * inv_z, -(a * x + b * y) * inv_z
            J[1, 0], J[1, 1], J[1, 2] = c * inv_z, d * inv_z, -(c * x + d * y) * inv_z
            J[0] *= fx
            J[1] *= fy
        else:
            J[0, 0] = fx * inv_z
            J[0, 2] = -fx * x * inv_z
            J[1, 1] = fy * inv_z
            J[1, 2] = -fy * y * inv_z
        return uv, front, J

    def unproject(self, uv: np.ndarray) -> np.ndarray:
        """Pixels (N,2) -> camera-frame points (N,3) on the z = 1 plane (multiply by z-depth)."""
        uv = np.asarray(uv, dtype=np.float64)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise InputError(f"pixels must be (N, 2), got {uv.shape}")
        (fx, fy), (cx, cy) = self.focal, self.principal_point
        x, y = self._undistort((uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy)
        return np.stack([x, y, np.ones_like(x)], axis=-1)

    def pixel_centers(self) -> np.ndarray:
        """(H, W, 2) pixel-centre coordinates (u, v) in COLMAP convention: (j + 0.5, i + 0.5)."""
        u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        return np.stack([u, v], axis=-1)
