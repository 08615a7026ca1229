"""Pose and covariance conversions between the library's conventions and ROS messages.

The library's covariances are of a twist xi = [rho, omega] perturbing T_world_body on the right
(in the body frame), which is what the refiner's left update of T_body_world gives. ROS's
PoseWithCovariance wants the position and the rotation about the *parent's* fixed axes, so both
blocks rotate by R_world_body (first order).
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Pose as PoseMsg
from geometry_msgs.msg import PoseWithCovariance

from segloc_core.errors import InputError
from segloc_core.geometry import Pose


def pose_to_msg(T_parent_child: Pose) -> PoseMsg:
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in T_parent_child.t)
    x, y, z, w = (float(v) for v in T_parent_child.quat_xyzw())
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = x, y, z, w
    return msg


def msg_to_pose(msg: PoseMsg) -> Pose:
    """T_parent_child of a geometry_msgs/Pose; InputError on NaN or a zero quaternion."""
    q, p = msg.orientation, msg.position
    t = np.array([p.x, p.y, p.z])
    if not np.all(np.isfinite(t)):
        raise InputError(f"pose position is not finite: {t}")
    return Pose.from_quat_xyzw(np.array([q.x, q.y, q.z, q.w]), t)


def body_to_parent_covariance(T_parent_body: Pose, covariance_body: np.ndarray) -> np.ndarray:
    """(6,6) covariance of a right (body-frame) perturbation -> ROS's parent-frame convention."""
    J = np.zeros((6, 6))
    J[:3, :3] = J[3:, 3:] = T_parent_body.R
    return J @ covariance_body @ J.T


def change_body_covariance(covariance_a: np.ndarray, T_a_b: Pose) -> np.ndarray:
    """Covariance of a body-frame perturbation of frame a -> of rigidly attached frame b
    (T_world_b = T_world_a T_a_b, so xi_b = Ad(T_b_a) xi_a)."""
    Ad = T_a_b.inv().adjoint()
    return Ad @ covariance_a @ Ad.T


def to_pose_with_covariance(T_parent_body: Pose, covariance_body: np.ndarray) -> PoseWithCovariance:
    cov = body_to_parent_covariance(T_parent_body, covariance_body)
    cov = np.where(np.isfinite(cov), cov, 1e6)  # ROS has no "unknown"; a huge value says it
    return PoseWithCovariance(pose=pose_to_msg(T_parent_body), covariance=cov.reshape(-1).tolist())
