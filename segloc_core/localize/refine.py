"""Label-consistency pose refiner (SegLoc Eq. 7): align labeled 3D points to K-class probability maps.

(About 700 lines, one module on purpose: the samplers, the level objectives, the translation
search and the coarse-to-fine driver share private per-level state; split, they would have to
expose it.)

E(T) = sum_m w_m rho(|p(x_m) - e_{y_m}|), x_m the projection of X_m under T_cam_world, rho the
Cauchy loss rho(x) = psi^2/2 log(1 + x^2/psi^2) (psi = 0.1). Levenberg-Marquardt on SE(3) with a left
update (`segloc_core.localize.lm.run_lm`), coarse to fine over the network's levels.

Why the cost of an iteration does not grow with K: with r = p - e_y (K-vector),
c = |r|^2 = S - 2 p_y + 1 with S = sum_k p_k^2; its gradient wrt the pixel is 2 e with
e = sum_k r_k grad p_k = grad S / 2 - grad p_y, and the Gauss-Newton Hessian of the vector residual
needs G = sum_k grad p_k grad p_k^T. Under bilinear interpolation all three are quadratic forms in
the Gram matrix of the four corner probability vectors, so per-pixel inner products with the
neighbours (and max_k p_k, for the argmax test), computed once per frame (`segloc_core.reductions`,
produced by the network graph), give them exactly; an iteration samples those channels plus channel
y_m of the probabilities, by flat indexing, at the projected points only: O(N) whatever K.
`refine_direct` is the same optimizer with the textbook sampler that reads all K channels per point
(the benchmark baseline); both share `run_lm` and the assembly and compute the same numbers.

Coarse to fine: before any LM, a grid of camera-frame translations of the initial pose is scored at
once on the coarsest level (robust cost at nearest pixels) and LM starts from the best; LM's psi is
annealed from 0.3 on the coarsest level to 0.1 (SegLoc's) on the finest. Why: the label maps carry
no long-range gradient (clusters are ~1 m wide), so LM alone from 1-1.5 m off lands where
translation and rotation trade off (rotation errors alone converge); see `RefineConfig`.

With a `GaussianPrior` (tracking: the last fix moved by odometry), the cost becomes
E(T)/sigma0^2 + 1/2 xi^T Lambda xi, xi = log(T T_prior^-1): a MAP estimate with the image term's
noise sigma0^2 estimated at the start of each level (fixed during it, so LM compares like with
like). Why: along a street the labels constrain the forward translation weakly, and refinement
from a propagated prior slid metres per frame where odometry knew better.

Points behind the camera or outside the interpolation domain (the hull of pixel centres,
u in [0.5, W - 0.5] in COLMAP's convention) are ignored; LM compares the cost of two poses on the
points visible at both, so a step gains nothing by pushing points out of view or pulling them in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from segloc_core.errors import InputError
from segloc_core.geometry import Camera, Pose
from segloc_core.localize.lm import Linearization, LMConfig, run_lm_many
from segloc_core.place_labels import level_labels
from segloc_core.reductions import REDUCTION_NAMES, dequantize, level_reductions

__all__ = ["REDUCTION_NAMES", "level_reductions", "level_labels", "LevelInput", "LabeledPoints",
           "RefineConfig", "RefineResult", "GaussianPrior", "refine", "refine_many", "refine_direct"]

_I_SUM_SQ, _I_MAX, _I_RIGHT, _I_DOWN, _I_DOWN_RIGHT, _I_DOWN_LEFT = (
    REDUCTION_NAMES.index(n) for n in
    ("sum_sq", "max_prob", "dot_right", "dot_down", "dot_down_right", "dot_down_left"))


@dataclass(frozen=True)
class LevelInput:
    """One pyramid level of the query: probs (K,H,W) float32 or uint8 (p*255), reductions
    (len(REDUCTION_NAMES),H,W) float32 from `level_reductions` (None: computed here, O(K H W)), and
    the camera at this level's resolution (width W, height H)."""

    probs: np.ndarray
    reductions: np.ndarray | None
    camera: Camera


@dataclass(frozen=True)
class LabeledPoints:
    """Map points: xyz (N,3) world metres, labels (N,) ints in [0, K), weights (N,) >= 0 or None (=1)."""

    xyz: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class RefineConfig:
    """psi: Cauchy scale on |r| at the finest level (0.1, as SegLoc), which sets the accuracy;
    psi_coarse: psi of the coarser levels, coarsest first (with fewer levels the last entries
    apply, with more the first repeats): a wider kernel at coarse levels lets the many points that
    are still misaligned pull, instead of being flattened as outliers (annealed towards psi).
    search_radius_m, search_step_m, search_points: before any LM, a grid of camera-frame
    translations of the initial pose within the radius (0: off) is scored on the coarsest level by
    the robust cost of `search_points` points at their nearest pixel, and LM starts from the best
    (the initial pose is a grid point). Why: the labels carry no long-range gradient (clusters are
    ~1 m wide), so LM from a start 1-1.5 m off lands where translation and rotation trade off; rotation
    errors alone converge. The radius should cover the prior's translation error.
    lm: damping/stopping on the coarser levels, which only need to land in the basin of the next
    level; lm_finest: on the finest level, tighter (step 0.01 px, relative cost 1e-4): the finest
    level sets the accuracy, and the old 0.1 px / 1e-3 stopped it early (oracle study: +10 points
    of raw fixes within 0.25 m); 1e-6 gained 2 points within 0.25 m and cost 23 instead of 14 ms
    per refine (`segloc bench refine`, the finest 160x120 level creeps on for ~13 iterations; the
    floor is 15 ms), 1e-5 1.5 points for 18 ms; running out of iterations there is not a failure
    (the pose only got better; the localizer's gates judge it).
    Divergence: a final pose that is not finite, that moved farther than max_translation_m from its
    start, or that sees fewer than min_visible_fraction of the points its start saw (it left the
    map) is reported as diverged. The bound is wide (15 m) on purpose: 5 m marked correct recoveries
    from starts 5 m along the road as diverged (oracle study); a wrong pose is the gates' business;
    points_per_pixel caps the points used at a level to points_per_pixel * W * H (a fixed random
    subset, nested across levels): a 40x30 level cannot tell 5000 points apart, so coarse
    iterations stay cheap."""

    psi: float = 0.1
    psi_coarse: tuple[float, ...] = (0.3, 0.2, 0.15)
    search_radius_m: float = 1.6
    search_step_m: float = 0.4
    search_points: int = 300
    lm: LMConfig = field(default_factory=LMConfig)
    lm_finest: LMConfig = field(default_factory=lambda: LMConfig(
        max_iterations=50, step_tol=0.01, cost_rtol=1e-4))
    max_translation_m: float = 15.0
    min_visible_fraction: float = 0.25
    points_per_pixel: float = 0.5

    def level_psi(self, level: int, num_levels: int) -> float:
        """psi of `level` (0 = coarsest) in a pyramid of `num_levels`."""
        above = num_levels - 1 - level  # levels between this one and the finest
        if above == 0 or not self.psi_coarse:
            return self.psi
        return self.psi_coarse[max(len(self.psi_coarse) - above, 0)]


@dataclass(frozen=True)
class GaussianPrior:
    """Prior belief about T_cam_world: T = exp(xi) T_mean with xi ~ N(0, covariance), xi the
    left-update twist (camera frame; tx ty tz in m, rx ry rz in rad), as `RefineResult.covariance`."""

    T_mean: Pose
    covariance: np.ndarray  # (6,6)

    def __post_init__(self) -> None:
        cov = np.asarray(self.covariance, dtype=np.float64)
        if cov.shape != (6, 6) or not np.all(np.isfinite(cov)) or \
                np.any(np.linalg.eigvalsh(0.5 * (cov + cov.T)) <= 0):
            raise InputError("prior covariance must be a finite, positive definite 6x6 matrix")
        if not self.T_mean.is_finite():
            raise InputError("prior pose must be finite")

    @classmethod
    def isotropic(cls, T_mean: Pose, std_m: float, std_rad: float) -> GaussianPrior:
        return cls(T_mean, np.diag([std_m ** 2] * 3 + [std_rad ** 2] * 3))


@dataclass(frozen=True)
class RefineResult:
    """Refined pose and diagnostics.

    covariance: (6,6) covariance of the left-update twist xi = [rho (m), omega (rad)] of T_cam_world,
    i.e. of a perturbation expressed in the camera frame (order tx ty tz rx ry rz; units m^2, m rad,
    rad^2). It is sigma2 * H^-1 from the final normal equations on the finest level (H the
    Gauss-Newton Hessian with the robust weights, sigma2 the weighted mean squared residual); it
    ignores the correlation between neighbouring pixels, so it is optimistic. For T_world_cam the
    same matrix is the covariance of its right perturbation (camera frame). Infinite if singular.
    costs: per level (coarse to fine), the robust cost after each accepted iteration (index 0 = start).
    num_valid: visible points at the final pose on the finest level.
    consistency: share of those points whose label is the argmax class at their (nearest) pixel,
    tested as p_y >= max_prob (reduction channel), so O(N) whatever K.
    failure: None, "too_few_points", "diverged" or "max_iterations" (converged is False then).
    """

    T_cam_world: Pose
    covariance: np.ndarray
    costs: tuple[np.ndarray, ...]
    num_valid: int
    consistency: float
    converged: bool
    failure: str | None
    iterations: int


# ------------------------------------------------------------------------------------------------
# Sampling at projected points. x, y are continuous pixel-centre indices (x = u - 0.5).

@dataclass
class _Cell:
    """Bilinear cells of the valid points: flat indices (4,n) of the corner pixel centres
    (top-left, top-right, bottom-left, bottom-right) and the fractions fx, fy (n,) in [0, 1]."""

    corners: np.ndarray
    fx: np.ndarray
    fy: np.ndarray


class _ReducedSampler:
    """The K-independent sampler: exact bilinear cost, gradient and G from the inner-product channels
    (see `segloc_core.reductions`), p_y by flat indexing into the label's channel."""

    def __init__(self, level: LevelInput):
        red = level.reductions
        _, H, W = red.shape
        # pixel-major copy, 4 float32 per pixel viewed as one 16-byte item: one 1-D gather per
        # point and corner fetches S, <right>, <down>, <down-right> together
        chans = [_I_SUM_SQ, _I_RIGHT, _I_DOWN, _I_DOWN_RIGHT]
        rows = np.stack([red[c].reshape(-1) for c in chans], axis=-1)  # (H*W, 4), one pass
        self.table = rows.view(np.complex128).reshape(-1)
        self.down_left = red[_I_DOWN_LEFT].reshape(-1)
        self.sum_sq = red[_I_SUM_SQ].reshape(-1)
        self.probs = level.probs.reshape(-1)
        self.scale = np.float32(1.0 / 255.0) if level.probs.dtype == np.uint8 else None
        self.hw = H * W

    def nearest(self, pix: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Squared residuals |p - e_y|^2 = S - 2 p_y + 1 at pixels pix (..., n) (flat indices) for
        labels (n,), float32."""
        py = self.probs[pix + labels * self.hw]
        c = self.sum_sq[pix]
        c += 1.0
        c -= py * (2 * self.scale) if self.scale is not None else 2 * py
        return c

    def sample(self, cell: _Cell, labels: np.ndarray):
        """Per valid point: squared residual c, e = grad c / 2 (e_u, e_v), G entries (uu, uv, vv).

        Corners 0..3 = 00, 01, 10, 11 (row, column); Sc = |p(c)|^2, R0 = <p00, p01>,
        R2 = <p10, p11>, D0 = <p00, p10>, D1 = <p01, p11>, X = <p00, p11>, Y = <p01, p10>.
        Every output is a sum over these channels' linear combinations (`_combos`, matrix products)
        weighted by bilinear polynomials in the fractions: few, large numpy operations.
        """
        n = cell.fx.shape[0]
        t = self.table[cell.corners].view(np.float32).reshape(4, n, 4)  # (corner, point, channel)
        chans = np.empty((17, n), np.float32)
        chans[:16].reshape(4, 4, n)[:] = t.transpose(0, 2, 1)
        chans[16] = self.down_left[cell.corners[1]]
        # rows as in `_combos`; two products: OpenBLAS is ~3x slower per row on 19 rows than on 9 or 10
        rows = (_COMBOS_X @ chans).reshape(3, 3, n)  # (coefficient along x, (T, M, B), n)
        Q = _COMBOS_G @ chans  # (aa, ab, bb, cc, cd, dd, ac, ad, bc, bd)
        # per axis (x: u, y: v) with f the fraction and g = 1 - f: weights [g^2, 2 g f, f^2] of
        # a quadratic form along the axis and [-g, g - f, f] of its half derivative
        f = np.empty((2, n), np.float32)
        f[0], f[1] = cell.fx, cell.fy
        g = 1.0 - f
        w = np.empty((3, 2, n), np.float32)
        np.multiply(g, g, out=w[0])
        np.multiply(g, f, out=w[1])
        w[1] *= 2.0
        np.multiply(f, f, out=w[2])
        wd = np.empty((3, 2, n), np.float32)
        np.negative(g, out=wd[0])
        np.subtract(g, f, out=wd[1])
        wd[2] = f
        V = _dot(rows, w[:, 0, None])  # |p_top|^2, <p_top, p_bottom>, |p_bottom|^2
        Vx = _dot(rows, wd[:, 0, None])  # their half derivatives along x
        # bilinear weights of the corners 00, 01, 10, 11 and their derivatives along x and y
        gf = np.stack([g, f])  # (g/f, axis, n)
        wb = (gf[:, None, 1] * gf[None, :, 0]).reshape(4, n)
        wbx = np.empty((4, n), np.float32)
        np.negative(gf[:, 1], out=wbx[0::2])
        wbx[1::2] = gf[:, 1]
        wby = np.empty((4, n), np.float32)
        np.negative(gf[:, 0], out=wby[:2])
        wby[2:] = gf[:, 0]
        q = self.probs[labels * self.hw + cell.corners]  # p_y at the corners
        if self.scale is not None:
            q = q * self.scale
        py = _dot(q, wb)
        c = _dot(V, w[:, 1])
        c += 1.0
        c -= 2.0 * py
        np.maximum(c, 0.0, out=c)
        e_u = _dot(Vx, w[:, 1]) - _dot(q, wbx)
        e_v = _dot(V, wd[:, 1]) - _dot(q, wby)
        G_uu = _dot(Q[0:3], w[:, 1])
        G_vv = _dot(Q[3:6], w[:, 0])
        G_uv = _dot(Q[6:10], wb)
        return c, e_u, e_v, (G_uu, G_uv, G_vv)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot products over the leading axis of (k, ..., n) arrays (k small)."""
    return (a * b).sum(axis=0)


def _combos() -> np.ndarray:
    """(19, 17) float32: rows of channel combinations the reduced sampler needs, over the channels
    [S0 R0 D0 X0, S1 R1 D1 X1, S2 R2 D2 X2, S3 R3 D3 X3, Y] (corner-major as gathered; R1, X1,
    D2, X2, R3, D3, X3 unused). With a = p01 - p00, b = p11 - p10 (along u), c = p10 - p00,
    d = p11 - p01 (along v), M' = (X + Y) / 2: T (S0, R0, S1), M (D0, M', D1), B (S2, R2, S3) --
    quadratic forms along x of the top edge, the cross term and the bottom edge -- stored
    coefficient-major (S0 D0 S2, R0 M' R2, S1 D1 S3); (aa, ab, bb) -- along y for G_uu; (cc, cd, dd) --
    along x for G_vv; (ac, ad, bc, bd) -- bilinear for G_uv."""
    idx = {"S0": 0, "R0": 1, "D0": 2, "X": 3, "S1": 4, "D1": 6, "S2": 8, "R2": 9, "S3": 12, "Y": 16}
    rows = [{"S0": 1}, {"D0": 1}, {"S2": 1},
            {"R0": 1}, {"X": 0.5, "Y": 0.5}, {"R2": 1},
            {"S1": 1}, {"D1": 1}, {"S3": 1},
            {"S0": 1, "R0": -2, "S1": 1}, {"D0": 1, "D1": 1, "X": -1, "Y": -1},
            {"S2": 1, "R2": -2, "S3": 1},
            {"S0": 1, "D0": -2, "S2": 1}, {"R0": 1, "R2": 1, "X": -1, "Y": -1},
            {"S1": 1, "D1": -2, "S3": 1},
            {"S0": 1, "Y": 1, "R0": -1, "D0": -1}, {"R0": 1, "D1": 1, "S1": -1, "X": -1},
            {"D0": 1, "R2": 1, "S2": -1, "X": -1}, {"S3": 1, "Y": 1, "D1": -1, "R2": -1}]
    out = np.zeros((len(rows), 17), np.float32)
    for i, row in enumerate(rows):
        for name, coef in row.items():
            out[i, idx[name]] = coef
    return out


_COMBOS_X, _COMBOS_G = (np.ascontiguousarray(m) for m in np.split(_combos(), [9]))


class _DirectSampler:
    """The textbook sampler (benchmark baseline): all K channels per point, O(N K) per iteration.

    It reads the (K, H, W) maps as the network delivers them; `_PixelMajorDirectSampler` first
    copies them pixel-major (an O(K H W) pass per frame) so a point's K values are contiguous.
    """

    def __init__(self, level: LevelInput):
        K, H, W = level.probs.shape
        self.probs = dequantize(level.probs).reshape(K, H * W)

    def corner_values(self, cell: _Cell) -> np.ndarray:
        """(4, n, K) probabilities at the corners."""
        return self.pixel_values(cell.corners)

    def pixel_values(self, pix: np.ndarray) -> np.ndarray:
        """(..., K) probabilities at flat pixel indices pix (...)."""
        return np.moveaxis(self.probs[:, pix], 0, -1)

    def nearest(self, pix: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """|p - e_y|^2 at pixels pix (..., n) for labels (n,), from all K channels."""
        r = self.pixel_values(pix)
        r[..., np.arange(len(labels)), labels] -= 1.0
        return np.einsum("...k,...k->...", r, r)

    def sample(self, cell: _Cell, labels: np.ndarray):
        P = self.corner_values(cell)
        fx, fy = cell.fx[:, None], cell.fy[:, None]
        d_top, d_bottom = P[1] - P[0], P[3] - P[2]
        top = P[0] + fx * d_top
        bottom = P[2] + fx * d_bottom
        r = top + fy * (bottom - top)
        du = d_top + fy * (d_bottom - d_top)
        dv = bottom - top
        r[np.arange(len(labels)), labels] -= 1.0  # r = p - e_y
        c = np.einsum("nk,nk->n", r, r)
        G = [np.einsum("nk,nk->n", a, b) for a, b in ((du, du), (du, dv), (dv, dv))]
        return c, np.einsum("nk,nk->n", r, du), np.einsum("nk,nk->n", r, dv), G


class _PixelMajorDirectSampler(_DirectSampler):
    def __init__(self, level: LevelInput):
        K, H, W = level.probs.shape
        self.probs = np.ascontiguousarray(dequantize(level.probs).reshape(K, H * W).T)  # (H*W, K)

    def pixel_values(self, pix: np.ndarray) -> np.ndarray:
        return self.probs[pix]


# ------------------------------------------------------------------------------------------------

def _cauchy(c: np.ndarray, psi: float) -> np.ndarray:
    """rho on the squared residual c = x^2: psi^2/2 log(1 + c/psi^2)."""
    return 0.5 * psi * psi * np.log1p(c / (psi * psi))


class _LevelObjective:
    """Robust cost and normal equations of one level; the sampler is the only variant-specific part."""

    def __init__(self, level: LevelInput, points: LabeledPoints, psi: float, sampler):
        self.camera = level.camera
        self.H, self.W = level.probs.shape[1:]
        self.xyz_t = np.ascontiguousarray(np.asarray(points.xyz, dtype=np.float64).T)  # (3,N)
        self.labels = np.asarray(points.labels, dtype=np.int64)
        self.weights = (None if points.weights is None
                        else np.asarray(points.weights, dtype=np.float32))
        self.psi = psi
        self.sampler = sampler
        self.offsets = np.array([0, 1, self.W, self.W + 1])[:, None]

    def cells(self, T: Pose, with_jacobian: bool):
        """Project all points; return indices of the valid ones, their cells and, if asked,
        d uv / d xi (6, 2, n) float32 of the valid ones (`_jacobian`)."""
        return self._cells_at(T.R @ self.xyz_t + T.t[:, None], with_jacobian)

    def _cells_at(self, P: np.ndarray, with_jacobian: bool):
        """`cells` for camera-frame points P (3, m) (m = N, or N per pose for several poses)."""
        uv, front, _ = self.camera.project_columns(P, with_jacobian=False)
        x, y = uv[0] - 0.5, uv[1] - 0.5  # continuous pixel-centre indices
        with np.errstate(invalid="ignore"):
            ok = np.flatnonzero(front & (x >= 0) & (x <= self.W - 1) & (y >= 0) & (y <= self.H - 1))
        x, y = x[ok], y[ok]
        x0 = np.minimum(x.astype(np.int64), self.W - 2)
        y0 = np.minimum(y.astype(np.int64), self.H - 2)
        cell = _Cell(y0 * self.W + x0 + self.offsets, x - x0, y - y0)
        return ok, cell, (self._jacobian(P[:, ok]) if with_jacobian else None)

    def _jacobian(self, p: np.ndarray) -> np.ndarray:
        """d uv / d xi (6 twist components, 2 image axes, n) float32 at camera points p (3, n).

        d uv / d xi = d uv / d p [I, -[p]_x]: a row a of d uv / d p gives [a, p x a]. Float32: the
        normal equations need ~1e-6 relative precision, and the products are memory bound. PINHOLE
        has the closed form (with x = X/Z, y = Y/Z) u: fx [1/Z, 0, -x/Z, -x y, 1 + x^2, -y],
        v: fy [0, 1/Z, -y/Z, -(1 + y^2), x y, x]; the other models chain `project_columns`.
        """
        n = p.shape[1]
        J = np.empty((6, 2, n), np.float32)
        if self.camera.model == "PINHOLE":
            fx, fy = (np.float32(f) for f in self.camera.focal)
            X, Y, Z = p.astype(np.float32)
            iz = 1.0 / Z
            x, y = X * iz, Y * iz
            xy = x * y
            np.multiply(iz, fx, out=J[0, 0])
            J[1, 0] = 0.0
            np.multiply(J[0, 0], -x, out=J[2, 0])
            np.multiply(xy, -fx, out=J[3, 0])
            np.multiply(x, x, out=J[4, 0])
            J[4, 0] += 1.0
            J[4, 0] *= fx
            np.multiply(y, -fx, out=J[5, 0])
            J[0, 1] = 0.0
            np.multiply(iz, fy, out=J[1, 1])
            np.multiply(J[1, 1], -y, out=J[2, 1])
            np.multiply(y, y, out=J[3, 1])
            J[3, 1] += 1.0
            J[3, 1] *= -fy
            np.multiply(xy, fy, out=J[4, 1])
            np.multiply(x, fy, out=J[5, 1])
            return J
        _, _, Jp = self.camera.project_columns(p, with_jacobian=True)
        J[:3] = Jp.transpose(1, 0, 2)
        (px, py, pz), (ax, ay, az) = p.astype(np.float32)[:, None], J[:3]
        np.multiply(py, az, out=J[3])
        J[3] -= pz * ay
        np.multiply(pz, ax, out=J[4])
        J[4] -= px * az
        np.multiply(px, ay, out=J[5])
        J[5] -= py * ax
        return J

    def linearize(self, T: Pose) -> Linearization:
        return self.linearize_many([T])[0]

    def linearize_many(self, Ts: Sequence[Pose]) -> list[Linearization]:
        """Linearizations at several poses in one vectorized pass (a relocalizer refines several
        starts in lockstep: per-call overhead, not arithmetic, dominates small levels)."""
        N = len(self.labels)
        R = np.stack([T.R for T in Ts])
        t = np.stack([T.t for T in Ts])
        P = (R @ self.xyz_t + t[:, :, None]).transpose(1, 0, 2).reshape(3, len(Ts) * N)
        ok, cell, J = self._cells_at(P, with_jacobian=True)
        point = ok % N  # which map point each valid projection is
        c, e_u, e_v, (guu, guv, gvv) = self.sampler.sample(cell, self.labels[point])
        costs = _cauchy(c, self.psi)
        omega = 1.0 / (1.0 + c * np.float32(1.0 / (self.psi * self.psi)))  # 2 rho'(c): IRLS weight
        if self.weights is not None:
            costs *= self.weights[point]
            omega *= self.weights[point]
        # B = (omega G) J per point: Hm = sum over axes and points of J B^T, one matrix product
        n = len(ok)
        B = np.empty((6, 2, n), np.float32)
        wG = np.empty((3, n), np.float32)
        np.multiply(omega, guu, out=wG[0])
        np.multiply(omega, guv, out=wG[1])
        np.multiply(omega, gvv, out=wG[2])
        np.multiply(J[:, 0], wG[0], out=B[:, 0])
        B[:, 0] += J[:, 1] * wG[1]
        np.multiply(J[:, 0], wG[1], out=B[:, 1])
        B[:, 1] += J[:, 1] * wG[2]
        we = np.empty((2, n), np.float32)
        np.multiply(omega, e_u, out=we[0])
        np.multiply(omega, e_v, out=we[1])
        bounds = np.searchsorted(ok, np.arange(len(Ts) + 1) * N)
        out = []
        for k in range(len(Ts)):
            a, b = bounds[k], bounds[k + 1]
            m = b - a
            Jf = J[:, :, a:b].reshape(6, 2 * m)
            Hm = (Jf @ B[:, :, a:b].reshape(6, 2 * m).T).astype(np.float64)
            Hm = 0.5 * (Hm + Hm.T)  # exactly symmetric despite float32 rounding
            g = Jf @ we[:, a:b].reshape(2 * m)
            # mean squared displacement (px^2); the product with a copy avoids numpy's syrk path
            # (A @ A.T), which OpenBLAS runs ~4x slower than gemm for this shape
            metric = (Jf @ Jf.copy().T).astype(np.float64) / max(m, 1)
            point_costs = np.full(N, np.nan)
            point_costs[point[a:b]] = costs[a:b]
            sigma2 = float(omega[a:b] @ c[a:b]) / max(m - 6, 1)
            out.append(Linearization(float(costs[a:b].sum()), point_costs, Hm,
                                     g.astype(np.float64), m, sigma2, metric))
        return out

    def consistency(self, T: Pose, reductions: np.ndarray, probs: np.ndarray) -> tuple[int, float]:
        """(visible points, share whose label is the argmax at their nearest pixel)."""
        ok, cell, _ = self.cells(T, with_jacobian=False)
        if len(ok) == 0:
            return 0, 0.0
        near = cell.corners[0] + (cell.fx >= 0.5) + self.W * (cell.fy >= 0.5)
        py = probs.reshape(-1)[self.labels[ok] * self.H * self.W + near]
        tol = np.float32(1e-6)
        if probs.dtype == np.uint8:  # p_y was rounded to 1/255, max_prob (a float reduction) was not
            py = py * np.float32(1.0 / 255.0)
            tol += np.float32(0.5 / 255.0)
        maxp = reductions[_I_MAX].reshape(-1)[near]
        return len(ok), float(np.mean(py >= maxp - tol))


class _PriorObjective:
    """A level objective plus a Gaussian pose prior, in information units (see module docstring):
    the image term is divided by its noise sigma0^2 at the level's start pose, so H is the
    posterior information and the covariance is H^-1 (sigma2 reported as 1)."""

    def __init__(self, inner: _LevelObjective, prior: GaussianPrior):
        self.inner = inner
        self.T_prior_inv = prior.T_mean.inv()
        self.info = np.linalg.inv(np.asarray(prior.covariance, dtype=np.float64))
        self.scale: float | None = None

    def linearize_many(self, Ts: Sequence[Pose]) -> list[Linearization]:
        lins = self.inner.linearize_many(Ts)
        if self.scale is None:  # run_lm linearizes at the level's start pose(s) first
            sigma2 = lins[0].sigma2
            ok = np.isfinite(sigma2) and sigma2 > 0
            self.scale = 1.0 / max(sigma2, 1e-6) if ok else 1.0
        out = []
        for T, lin in zip(Ts, lins):
            xi = (T @ self.T_prior_inv).log()  # first order: d xi / d (left update) = I
            prior_cost = 0.5 * float(xi @ self.info @ xi)
            out.append(Linearization(
                lin.cost * self.scale + prior_cost, lin.point_costs * self.scale,
                lin.H * self.scale + self.info, lin.g * self.scale + self.info @ xi,
                lin.num_valid, 1.0, lin.metric, prior_cost))
        return out


# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _search_grid(radius_m: float, step_m: float) -> np.ndarray:
    """(m, 3) float32 translations on a cubic grid through 0 with spacing step_m, within radius_m,
    nearest first (cached, read-only)."""
    g = np.arange(-np.floor(radius_m / step_m), np.floor(radius_m / step_m) + 1) * step_m
    d = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    d = d[np.linalg.norm(d, axis=1) <= radius_m + 1e-9].astype(np.float32)
    d = d[np.argsort(np.linalg.norm(d, axis=1), kind="stable")]  # 0 first: ties keep the start
    d.flags.writeable = False
    return d


def _translation_search(level: LevelInput, sampler, points: LabeledPoints, T: Pose,
                        config: RefineConfig) -> Pose:
    """The best of T's camera-frame translations on the search grid (see RefineConfig), scored on
    `level` at once for all candidates: rho(|p - e_y|^2) at each point's nearest pixel, and
    rho(1) (as a mismatch) for a point out of view, so moving points out of view gains nothing.
    Float32 throughout: nearest pixels of a coarse level need no more."""
    deltas = _search_grid(config.search_radius_m, config.search_step_m)
    _, H, W = level.probs.shape
    P = (T.R @ np.asarray(points.xyz, dtype=np.float64).T + T.t[:, None]).astype(np.float32)
    m, n = len(deltas), P.shape[1]
    Pc = (P[:, None, :] + deltas.T[:, :, None]).reshape(3, m * n)
    uv, front, _ = level.camera.project_columns(Pc, with_jacobian=False)
    u, v = uv
    with np.errstate(invalid="ignore"):  # the nearest pixel centre is floor(u) in COLMAP's pixels
        ok = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    v[~ok] = 0.0
    u[~ok] = 0.0
    np.floor(v, out=v)
    v *= W
    v += np.floor(u)
    c = sampler.nearest(v.astype(np.int64).reshape(m, n), np.asarray(points.labels, dtype=np.int64))
    np.maximum(c, 0.0, out=c)
    c[~ok.reshape(m, n)] = 1.0
    rho = np.log1p(c * np.float32(1.0 / (config.psi * config.psi)))  # rho up to a constant factor
    cost = rho.sum(axis=1) if points.weights is None else rho @ np.asarray(points.weights, np.float32)
    return Pose(np.eye(3), deltas[int(np.argmin(cost))].astype(np.float64)) @ T


def _check_inputs(levels: Sequence[LevelInput], points: LabeledPoints,
                  starts: Sequence[Pose]) -> list[LevelInput]:
    for T in starts:
        if not isinstance(T, Pose) or not T.is_finite():
            raise InputError(f"initial pose must be a finite Pose, got {T!r}")
    if len(levels) == 0:
        raise InputError("refine needs at least one level of probability maps")
    K = np.asarray(levels[-1].probs).shape[0]  # the finest level reads the map's labels as they are
    out = []
    for i, lv in enumerate(levels):
        probs = np.asarray(lv.probs)
        if probs.dtype not in (np.float32, np.uint8):
            raise InputError(f"level {i}: probs must be float32 or uint8 (p*255), got {probs.dtype}")
        if probs.ndim != 3 or probs.shape[1] < 2 or probs.shape[2] < 2:
            raise InputError(f"level {i}: probs must be (K, H, W) with H, W >= 2, got {probs.shape}")
        if probs.shape[0] < 2 or K % probs.shape[0]:
            raise InputError(f"level {i}: K={probs.shape[0]} must divide the finest level's K={K} "
                             "(a coarse level reads the parent label label // (K / K_level))")
        _, H, W = probs.shape
        if (lv.camera.width, lv.camera.height) != (W, H):
            raise InputError(f"level {i}: camera is {lv.camera.width}x{lv.camera.height} but the "
                             f"maps are {W}x{H}; pass the camera scaled to the level")
        red = level_reductions(probs) if lv.reductions is None else np.asarray(lv.reductions)
        if red.shape != (len(REDUCTION_NAMES), H, W) or red.dtype != np.float32:
            raise InputError(f"level {i}: reductions must be float32 {(len(REDUCTION_NAMES), H, W)} "
                             f"({', '.join(REDUCTION_NAMES)}), got {red.dtype} {red.shape}")
        out.append(LevelInput(probs, red, lv.camera))
    xyz, labels = np.asarray(points.xyz), np.asarray(points.labels)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise InputError(f"points.xyz must be a non-empty (N, 3) array, got shape {xyz.shape}")
    if not np.all(np.isfinite(xyz)):
        raise InputError("points.xyz contains NaN or infinite coordinates")
    if labels.shape != (xyz.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"points.labels must be ({xyz.shape[0]},) integers, "
                         f"got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= K:
        raise InputError(f"points.labels must lie in [0, {K}) for K={K} maps, got "
                         f"[{labels.min()}, {labels.max()}]")
    if points.weights is not None:
        w = np.asarray(points.weights)
        if w.shape != labels.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InputError(f"points.weights must be ({len(labels)},) finite and >= 0")
    return out


def _subset(points: LabeledPoints, order: np.ndarray, num: int, K: int, K_level: int) -> LabeledPoints:
    """The first `num` points of `order`, their labels as a level of K_level classes reads them."""
    if num < len(order):
        keep = np.sort(order[:num])
        w = None if points.weights is None else np.asarray(points.weights)[keep]
        points = LabeledPoints(np.asarray(points.xyz)[keep], np.asarray(points.labels)[keep], w)
    if K_level == K:
        return points
    return LabeledPoints(points.xyz, level_labels(points.labels, K, K_level), points.weights)


@dataclass
class _Track:
    """One start's progress through the pyramid in `_refine`."""

    T_init: Pose
    T: Pose
    costs: list = field(default_factory=list)
    iterations: int = 0
    status: str = "converged"
    lin: Linearization | None = None
    level: int = 0  # the level it stopped on (the last, or where too few points were left)


def _refine(levels, points, T_inits: Sequence[Pose], config, sampler_cls,
            prior: GaussianPrior | None = None) -> list[RefineResult]:
    """Refine every start; all starts go through each level's LM together (`run_lm_many`)."""
    levels = _check_inputs(levels, points, T_inits)
    order = np.random.default_rng(0).permutation(len(points.labels))
    sampler = sampler_cls(levels[0])
    K = levels[-1].probs.shape[0]
    search_points = _subset(points, order, config.search_points, K, levels[0].probs.shape[0])
    tracks = [_Track(T, T if config.search_radius_m <= 0 else
                     _translation_search(levels[0], sampler, search_points, T, config))
              for T in T_inits]
    objectives = []
    for i, lv in enumerate(levels):
        _, H, W = lv.probs.shape
        level_points = _subset(points, order, int(np.ceil(config.points_per_pixel * H * W)), K,
                               lv.probs.shape[0])
        sampler = sampler if i == 0 else sampler_cls(lv)
        obj = _LevelObjective(lv, level_points, config.level_psi(i, len(levels)), sampler)
        objectives.append(obj)
        running = [t for t in tracks if t.status != "too_few_points"]
        if not running:
            break
        traces = run_lm_many(obj if prior is None else _PriorObjective(obj, prior),
                             [t.T for t in running],
                             config.lm_finest if i == len(levels) - 1 else config.lm)
        for track, trace in zip(running, traces):
            track.costs.append(trace.costs)
            track.iterations += trace.iterations
            track.T, track.lin, track.status, track.level = trace.T, trace.lin, trace.status, i
    return [_result(t, objectives[t.level], levels[t.level], len(levels), config) for t in tracks]


def _result(track: _Track, obj: _LevelObjective, level: LevelInput, level_count: int,
            config: RefineConfig) -> RefineResult:
    T, lin = track.T, track.lin
    num_valid, consistency = obj.consistency(T, level.reductions, level.probs)
    try:
        cov = lin.sigma2 * np.linalg.inv(lin.H)
    except np.linalg.LinAlgError:
        cov = np.full((6, 6), np.inf)
    finest = track.level == level_count - 1
    ok = track.status == "converged" or (track.status == "max_iterations" and finest)
    failure = None if ok else track.status
    moved = np.linalg.norm(T.center() - track.T_init.center())
    if not T.is_finite() or moved > config.max_translation_m or \
            num_valid < config.min_visible_fraction * obj.consistency(track.T_init, level.reductions,
                                                                      level.probs)[0]:
        failure = "diverged"
    return RefineResult(T, cov, tuple(track.costs), num_valid, consistency, failure is None,
                        failure, track.iterations)


def refine(levels: Sequence[LevelInput], points: LabeledPoints, T_cam_world_init: Pose,
           config: RefineConfig = RefineConfig(), prior: GaussianPrior | None = None) -> RefineResult:
    """Refine T_cam_world by label consistency, coarse to fine over `levels` (coarsest first),
    optionally pulled towards a Gaussian `prior` (MAP; see the module docstring).

    Per iteration O(N) whatever K (see the module docstring). Raises InputError on bad input.
    """
    return _refine(levels, points, [T_cam_world_init], config, _ReducedSampler, prior)[0]


def refine_many(levels: Sequence[LevelInput], points: LabeledPoints, starts: Sequence[Pose],
                config: RefineConfig = RefineConfig(),
                prior: GaussianPrior | None = None) -> list[RefineResult]:
    """`refine` from each of several starts (a relocalizer's hypotheses) on the same points, run in
    lockstep so each LM iteration linearizes all starts in one vectorized pass: the same results
    as one `refine` per start, in less time, as per-call overhead dominates small levels. With a
    prior, the image term's noise is estimated at the first start."""
    return _refine(levels, points, list(starts), config, _ReducedSampler, prior)


def refine_direct(levels: Sequence[LevelInput], points: LabeledPoints, T_cam_world_init: Pose,
                  config: RefineConfig = RefineConfig(), pixel_major: bool = False) -> RefineResult:
    """The same refiner with K-dimensional residuals sampled directly (O(N K) per iteration).

    The benchmark baseline; it differs from `refine` only in the sampler, and gives the same cost,
    gradient and Hessian up to float rounding. pixel_major copies each level to (H*W, K) first.
    """
    sampler = _PixelMajorDirectSampler if pixel_major else _DirectSampler
    return _refine(levels, points, [T_cam_world_init], config, sampler)[0]
