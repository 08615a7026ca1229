"""Vehicle traversals of the loop: ground-truth base_link poses, the camera mount, wheel odometry.

Frames follow REP 103/105: base_link x forward, y left, z up; the camera's optical frame x right,
y down, z forward; `odom` starts at the vehicle's first pose and drifts from the ground truth as
a real wheel odometry does (scale error, yaw-rate bias, noise), integrated in the plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segloc_core.world.scene import RIGHT_LANE_D_M, Centerline

#: base_link -> optical rotation without tilt: optical z = base x, optical x = -base y, y = -base z.
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def mount_matrix(xyz_m: tuple[float, float, float], pitch_down_deg: float) -> np.ndarray:
    """T_base_cam (4,4): camera optical frame -> base_link, camera tilted down by pitch."""
    th = np.radians(pitch_down_deg)
    Ry = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])
    T = np.eye(4)
    T[:3, :3] = Ry @ R_BASE_OPTICAL
    T[:3, 3] = xyz_m
    return T


def _rot_zyx(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(N,3,3) rotations R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    R = np.empty(yaw.shape + (3, 3))
    R[..., 0, 0] = cy * cp
    R[..., 0, 1] = cy * sp * sr - sy * cr
    R[..., 0, 2] = cy * sp * cr + sy * sr
    R[..., 1, 0] = sy * cp
    R[..., 1, 1] = sy * sp * sr + cy * cr
    R[..., 1, 2] = sy * sp * cr - cy * sr
    R[..., 2, 0] = -sp
    R[..., 2, 1] = cp * sr
    R[..., 2, 2] = cp * cr
    return R


@dataclass(frozen=True)
class Traversal:
    """One drive around the loop sampled at the odometry rate (times relative to the start)."""

    t_s: np.ndarray            # (N,) seconds from the start
    T_world_base: np.ndarray   # (N,4,4) ground truth
    T_odom_base: np.ndarray    # (N,4,4) noisy wheel odometry, identity at t = 0

    def base_at(self, t: np.ndarray) -> np.ndarray:
        """Ground-truth T_world_base at times t (seconds), interpolated (translation linear,
        rotation by re-orthonormalised linear blend: samples are 20 ms apart)."""
        t = np.atleast_1d(np.asarray(t, np.float64))
        i = np.clip(np.searchsorted(self.t_s, t, side="right") - 1, 0, len(self.t_s) - 2)
        a = ((t - self.t_s[i]) / (self.t_s[i + 1] - self.t_s[i]))[:, None, None]
        T = self.T_world_base[i] * (1 - a) + self.T_world_base[i + 1] * a
        U, _, Vt = np.linalg.svd(T[:, :3, :3])
        T[:, :3, :3] = U @ Vt
        return T


def make_traversal(cl: Centerline, *, seed: int, index: int, is_mapping: bool, speed_mps: float,
                   speed_variation: float, lateral_offset_std_m: float, rate_hz: float,
                   laps: float = 1.0) -> Traversal:
    """Drive `laps` of the loop in the right lane; a non-mapping traversal gets its own lateral
    offset, weave, speed profile and start point (deterministic from seed and index)."""
    rng = np.random.default_rng([seed, 3, index])
    offset = 0.0 if is_mapping else float(np.clip(rng.normal(0, lateral_offset_std_m), -0.8, 0.8))
    weave_amp, weave_len = rng.uniform(0.05, 0.2), rng.uniform(60, 140)
    v_mean = speed_mps * (1.0 if is_mapping else rng.uniform(0.9, 1.1))
    v_period, v_phase = rng.uniform(12, 30), rng.uniform(0, 2 * np.pi)
    s0 = 0.0 if is_mapping else rng.uniform(0, 3)
    dt = 1.0 / rate_hz
    s_end = s0 + laps * cl.length_m - 3.0
    n = int(np.ceil((s_end - s0) / (v_mean * (1 - speed_variation)) / dt)) + 2
    t = np.arange(n) * dt
    v = v_mean * (1 + speed_variation * np.sin(2 * np.pi * t / v_period + v_phase))
    s = s0 + np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * dt)])
    keep = s <= s_end
    t, s = t[keep], s[keep]

    def d_of(s_: np.ndarray) -> np.ndarray:
        return RIGHT_LANE_D_M + offset + weave_amp * np.sin(2 * np.pi * s_ / weave_len)

    xy, _ = cl.frame(s, d_of(s))
    ahead, _ = cl.frame(s + 0.5, d_of(s + 0.5))
    behind, _ = cl.frame(s - 0.5, d_of(s - 0.5))
    yaw = np.unwrap(np.arctan2(ahead[:, 1] - behind[:, 1], ahead[:, 0] - behind[:, 0]))
    ph = rng.uniform(0, 2 * np.pi, 2)
    pitch = np.radians(0.4) * np.sin(2 * np.pi * s / 7.3 + ph[0])
    roll = np.radians(0.3) * np.sin(2 * np.pi * s / 5.1 + ph[1])
    T = np.tile(np.eye(4), (len(t), 1, 1))
    T[:, :3, :3] = _rot_zyx(yaw, pitch, roll)
    T[:, :2, 3] = xy
    return Traversal(t, T, _wheel_odometry(xy, yaw, rng, dt))


def _wheel_odometry(xy: np.ndarray, yaw: np.ndarray, rng: np.random.Generator, dt: float) -> np.ndarray:
    """Planar dead reckoning from noisy per-step increments (body-frame forward motion and yaw)."""
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dp = np.diff(xy, axis=0)
    fwd = c * dp[:, 0] + s * dp[:, 1]
    lat = -s * dp[:, 0] + c * dp[:, 1]
    dyaw = np.diff(yaw)
    scale = 1 + rng.normal(0, 0.01)
    yaw_scale = 1 + rng.normal(0, 0.01)
    yaw_bias = np.radians(rng.normal(0, 0.05))  # rad/s
    n = len(dyaw)
    fwd_n = fwd * scale + rng.normal(0, 0.002, n) * np.sqrt(np.abs(fwd))
    lat_n = lat * scale
    dyaw_n = dyaw * yaw_scale + yaw_bias * dt + rng.normal(0, np.radians(0.02), n)
    th = np.concatenate([[0.0], np.cumsum(dyaw_n)])
    ct, st = np.cos(th[:-1]), np.sin(th[:-1])
    px = np.concatenate([[0.0], np.cumsum(ct * fwd_n - st * lat_n)])
    py = np.concatenate([[0.0], np.cumsum(st * fwd_n + ct * lat_n)])
    T = np.tile(np.eye(4), (len(th), 1, 1))
    T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = np.cos(th), -np.sin(th), np.sin(th), np.cos(th)
    T[:, 0, 3], T[:, 1, 3] = px, py
    return T
