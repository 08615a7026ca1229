"""Procedural street loop: geometry of the default world, deterministic from a seed.

The world is a closed road loop (a rounded rectangle, counter-clockwise seen from above, z up)
lined with sidewalks, buildings, street furniture and vegetation. Everything is emitted as plain
triangles with per-vertex attributes the shaders turn into textures (bricks, windows, lane
markings are painted procedurally, so the triangle count stays small for llvmpipe).

Road coordinates: `s` is arclength along the centerline (metres, [0, L)), `d` the signed lateral
offset (metres, positive to the left = towards the inside of the loop). The vehicle drives
counter-clockwise in the right lane (d < 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from segloc_core.world import materials as M

#: Per-vertex layout: position (3), normal (3), uv (2, metres on the surface), material id,
#: param (object seed in [0, 1)), param2 (object size, e.g. facade height in metres).
VERTEX_FLOATS = 11

ROAD_HALF_WIDTH_M = 5.0     # two 3.2 m lanes plus a 1.8 m parking strip on each side
LANE_LINE_D_M = 3.25        # solid line between driving lane and parking strip
SIDEWALK_OUTER_M = 8.0
ROAD_Z_M = 0.02
SIDEWALK_Z_M = 0.15
RIGHT_LANE_D_M = -1.6


@dataclass(frozen=True)
class Centerline:
    """Dense samples of the loop's centerline, uniform in arclength (closed: last != first)."""

    s: np.ndarray        # (N,) arclength, metres
    xy: np.ndarray       # (N, 2) metres
    tangent: np.ndarray  # (N, 2) unit
    length_m: float

    @property
    def normal(self) -> np.ndarray:
        """Left normal (towards the inside of the counter-clockwise loop)."""
        return np.stack([-self.tangent[:, 1], self.tangent[:, 0]], axis=1)

    def at(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Point and unit tangent at arclength(s) (wrapped), linearly interpolated."""
        s = np.mod(np.asarray(s, dtype=np.float64), self.length_m)
        step = self.s[1] - self.s[0]
        f = s / step
        i0 = np.floor(f).astype(np.int64) % len(self.s)
        i1 = (i0 + 1) % len(self.s)
        a = (f - np.floor(f))[..., None]
        xy = self.xy[i0] * (1 - a) + self.xy[i1] * a
        # the loop closes: the segment from the last sample back to the first is interpolated too
        tg = self.tangent[i0] * (1 - a) + self.tangent[i1] * a
        tg /= np.linalg.norm(tg, axis=-1, keepdims=True)
        return xy, tg

    def frame(self, s: np.ndarray | float, d: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """World xy of road coordinates (s, d) and the tangent there."""
        xy, tg = self.at(s)
        n = np.stack([-tg[..., 1], tg[..., 0]], axis=-1)
        return xy + n * np.asarray(d, dtype=np.float64)[..., None], tg


def make_centerline(length_m: float, rng: np.random.Generator, step_m: float = 0.25) -> Centerline:
    """A counter-clockwise rounded rectangle of about `length_m` metres."""
    radius = 18.0 + 6.0 * rng.random()
    aspect = 1.4 + 0.4 * rng.random()
    straight = max(length_m - 2 * np.pi * radius, 40.0)
    b = straight / (2 * (1 + aspect))
    a = aspect * b
    # piecewise: straight along +x at y=-b/2-r ... built as arcs around the 4 inner corners
    corners = [(a / 2, -b / 2), (a / 2, b / 2), (-a / 2, b / 2), (-a / 2, -b / 2)]
    start_angles = [-np.pi / 2, 0.0, np.pi / 2, np.pi]
    lens = [a, b, a, b]
    total = 2 * a + 2 * b + 2 * np.pi * radius
    n = int(round(total / step_m))
    s = np.arange(n) * (total / n)
    xy = np.zeros((n, 2))
    tg = np.zeros((n, 2))
    # segment k: straight of length lens[k] ending at corner k, then a quarter arc around corner k
    bounds = []
    acc = 0.0
    for k in range(4):
        bounds.append((acc, acc + lens[k], acc + lens[k] + np.pi / 2 * radius))
        acc += lens[k] + np.pi / 2 * radius
    for k in range(4):
        s0, s1, s2 = bounds[k]
        cx, cy = corners[k]
        ang0 = start_angles[k]
        p_end = np.array([cx + radius * np.cos(ang0), cy + radius * np.sin(ang0)])
        d_dir = np.array([-np.sin(ang0), np.cos(ang0)])  # counter-clockwise tangent at ang0
        m = (s >= s0) & (s < s1)
        xy[m] = p_end + d_dir * (s[m] - s1)[:, None]
        tg[m] = d_dir
        m = (s >= s1) & (s < s2)
        ang = ang0 + (s[m] - s1) / radius
        xy[m] = np.stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang)], axis=1)
        tg[m] = np.stack([-np.sin(ang), np.cos(ang)], axis=1)
    return Centerline(s=s, xy=xy, tangent=tg, length_m=float(total))


class MeshBuilder:
    """Accumulates non-indexed triangles in the renderer's vertex layout."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def triangles(self, pos: np.ndarray, nrm: np.ndarray, uv: np.ndarray,
                  mat: int, param: float, param2: float = 0.0) -> None:
        """pos, nrm (T*3, 3), uv (T*3, 2); one material and object parameter for all."""
        n = len(pos)
        v = np.empty((n, VERTEX_FLOATS), np.float32)
        v[:, 0:3] = pos
        v[:, 3:6] = nrm
        v[:, 6:8] = uv
        v[:, 8] = mat
        v[:, 9] = param
        v[:, 10] = param2
        self._chunks.append(v)

    def quads(self, p: np.ndarray, uv: np.ndarray, mat: int, param: float, param2: float = 0.0,
              nrm: np.ndarray | None = None) -> None:
        """p (Q, 4, 3), uv (Q, 4, 2) corners counter-clockwise seen from the front side."""
        p = np.asarray(p, np.float64).reshape(-1, 4, 3)
        uv = np.asarray(uv, np.float64).reshape(-1, 4, 2)
        if nrm is None:
            nq = np.cross(p[:, 1] - p[:, 0], p[:, 3] - p[:, 0])
            nq /= np.maximum(np.linalg.norm(nq, axis=1, keepdims=True), 1e-12)
            nrm = np.repeat(nq[:, None], 4, axis=1)
        nrm = np.asarray(nrm, np.float64).reshape(-1, 4, 3)
        idx = [0, 1, 2, 0, 2, 3]
        self.triangles(p[:, idx].reshape(-1, 3), nrm[:, idx].reshape(-1, 3),
                       uv[:, idx].reshape(-1, 2), mat, param, param2)

    def box(self, center_xy: np.ndarray, z0: float, yaw: float, size: tuple[float, float, float],
            mat_side: int, mat_top: int | None, param: float, param2: float | None = None) -> None:
        """Oriented box standing at height z0; side uv = (perimeter metres, height above z0)."""
        lx, ly, lz = size
        c, s = np.cos(yaw), np.sin(yaw)
        R = np.array([[c, -s], [s, c]])
        local = np.array([[-lx / 2, -ly / 2], [lx / 2, -ly / 2], [lx / 2, ly / 2], [-lx / 2, ly / 2]])
        xy = local @ R.T + np.asarray(center_xy)[None]
        z1 = z0 + lz
        quads, uvs = [], []
        u = 0.0
        for k in range(4):
            a, b = xy[k], xy[(k + 1) % 4]
            w = float(np.linalg.norm(b - a))
            quads.append([[*a, z0], [*b, z0], [*b, z1], [*a, z1]])
            uvs.append([[u, 0], [u + w, 0], [u + w, lz], [u, lz]])
            u += w
        self.quads(np.array(quads), np.array(uvs), mat_side, param, lz if param2 is None else param2)
        if mat_top is not None:
            top = np.array([[[*xy[k], z1] for k in range(4)]])
            self.quads(top, local[None], mat_top, param, lz if param2 is None else param2)

    def cylinder(self, center_xy: np.ndarray, z0: float, radius: float, height: float,
                 mat: int, param: float, sides: int = 8, radius_top: float | None = None) -> None:
        rt = radius if radius_top is None else radius_top
        ang = np.linspace(0, 2 * np.pi, sides + 1)
        c, s = np.cos(ang), np.sin(ang)
        x, y = center_xy
        quads, uvs, nrms = [], [], []
        for k in range(sides):
            q = [[x + radius * c[k], y + radius * s[k], z0], [x + radius * c[k + 1], y + radius * s[k + 1], z0],
                 [x + rt * c[k + 1], y + rt * s[k + 1], z0 + height], [x + rt * c[k], y + rt * s[k], z0 + height]]
            quads.append(q)
            u0, u1 = ang[k] * radius, ang[k + 1] * radius
            uvs.append([[u0, 0], [u1, 0], [u1, height], [u0, height]])
            n0, n1 = [c[k], s[k], 0], [c[k + 1], s[k + 1], 0]
            nrms.append([n0, n1, n1, n0])
        self.quads(np.array(quads), np.array(uvs), mat, param, height, nrm=np.array(nrms))

    def ellipsoid(self, center: np.ndarray, radii: np.ndarray, mat: int, param: float) -> None:
        pos = _ICO_VERTS * np.asarray(radii)[None] + np.asarray(center)[None]
        nrm = _ICO_VERTS / np.asarray(radii)[None]
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        self.triangles(pos, nrm, pos[:, :2], mat, param, float(radii[2]))

    def build(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros((0, VERTEX_FLOATS), np.float32)
        return np.concatenate(self._chunks, axis=0)


def _icosphere_triangles(subdiv: int) -> np.ndarray:
    """Unit sphere as (T*3, 3) triangle-soup vertices."""
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                  [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], float)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
                  [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
                  [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    tris = v[f]
    for _ in range(subdiv):
        a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        tris = np.concatenate([np.stack(x, 1) for x in
                               ([a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca])])
    tris /= np.linalg.norm(tris, axis=2, keepdims=True)
    return tris.reshape(-1, 3)


_ICO_VERTS = _icosphere_triangles(1)


@dataclass(frozen=True)
class Placed:
    """An oriented footprint (for overlap tests): centre xy, yaw, half sizes."""

    xy: np.ndarray
    yaw: float
    half: tuple[float, float]

    def corners(self) -> np.ndarray:
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        hx, hy = self.half
        loc = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        return loc @ np.array([[c, -s], [s, c]]).T + self.xy


def _overlap(a: Placed, b: Placed, margin: float) -> bool:
    """Separating-axis test for two oriented rectangles grown by `margin`."""
    if np.linalg.norm(a.xy - b.xy) > np.hypot(*a.half) + np.hypot(*b.half) + 2 * margin:
        return False
    ca, cb = a.corners(), b.corners()
    for r in (a, b):
        for ax in (np.array([np.cos(r.yaw), np.sin(r.yaw)]), np.array([-np.sin(r.yaw), np.cos(r.yaw)])):
            pa, pb = ca @ ax, cb @ ax
            if pa.max() + margin < pb.min() or pb.max() + margin < pa.min():
                return False
    return True


@dataclass(frozen=True)
class DynamicObject:
    """A movable object (parked car or bin) in road coordinates; `param` picks its colour."""

    kind: int    # materials.CAR or materials.BIN
    s: float
    d: float
    param: float


@dataclass(frozen=True)
class StaticScene:
    """Everything that does not change between traversals."""

    vertices: np.ndarray        # (V, VERTEX_FLOATS) float32 triangle soup
    centerline: Centerline
    dynamic: tuple[DynamicObject, ...]  # the mapping traversal's movable objects
    lamp_spacing_m: float       # street lamps at s = k * spacing, alternating sides
    extent_m: float             # half size of the ground square


def _footprint_clear(tree: cKDTree, pl: Placed, min_dist: float) -> bool:
    c = pl.corners()
    pts = np.concatenate([c, (c + np.roll(c, -1, axis=0)) / 2, pl.xy[None]])
    return bool(tree.query(pts)[0].min() >= min_dist)


def build_static_scene(length_m: float, seed: int) -> StaticScene:
    """Generate the loop and all static objects; the same seed gives the same vertex array."""
    rng = np.random.default_rng([seed, 1])
    cl = make_centerline(length_m, rng)
    mb = MeshBuilder()
    tree = cKDTree(cl.xy)
    placed: list[Placed] = []

    # --- road, curbs and sidewalks as strips along the centerline (one quad per 1 m)
    step = max(1, int(round(1.0 / (cl.s[1] - cl.s[0]))))
    idx = np.arange(0, len(cl.s), step)
    s_a = cl.s[idx]
    s_b = np.append(s_a[1:], cl.length_m)

    def strip(d0: float, d1: float, z0: float, z1: float, mat: int) -> None:
        pa0, _ = cl.frame(s_a, np.full_like(s_a, d0))
        pb0, _ = cl.frame(s_b, np.full_like(s_b, d0))
        pa1, _ = cl.frame(s_a, np.full_like(s_a, d1))
        pb1, _ = cl.frame(s_b, np.full_like(s_b, d1))
        n = len(s_a)
        za0, za1 = np.full(n, z0), np.full(n, z1)
        q = np.stack([np.column_stack([pa0, za0]), np.column_stack([pb0, za0]),
                      np.column_stack([pb1, za1]), np.column_stack([pa1, za1])], axis=1)
        uv = np.stack([np.column_stack([s_a, np.full(n, d0)]), np.column_stack([s_b, np.full(n, d0)]),
                       np.column_stack([s_b, np.full(n, d1)]), np.column_stack([s_a, np.full(n, d1)])], axis=1)
        if d1 < d0 and z0 == z1:  # keep horizontal strips facing up
            q, uv = q[:, ::-1], uv[:, ::-1]
        mb.quads(q, uv, mat, 0.0)

    strip(-ROAD_HALF_WIDTH_M, ROAD_HALF_WIDTH_M, ROAD_Z_M, ROAD_Z_M, M.ROAD)
    for side in (-1.0, 1.0):
        d_curb = side * ROAD_HALF_WIDTH_M
        # vertical curb face, facing the road
        if side > 0:
            strip(d_curb, d_curb, ROAD_Z_M, SIDEWALK_Z_M, M.CURB)
        else:
            pa, _ = cl.frame(s_a, np.full_like(s_a, d_curb))
            pb, _ = cl.frame(s_b, np.full_like(s_b, d_curb))
            n = len(s_a)
            q = np.stack([np.column_stack([pb, np.full(n, ROAD_Z_M)]), np.column_stack([pa, np.full(n, ROAD_Z_M)]),
                          np.column_stack([pa, np.full(n, SIDEWALK_Z_M)]), np.column_stack([pb, np.full(n, SIDEWALK_Z_M)])], 1)
            uv = np.stack([np.column_stack([s_b, np.zeros(n)]), np.column_stack([s_a, np.zeros(n)]),
                           np.column_stack([s_a, np.full(n, 0.13)]), np.column_stack([s_b, np.full(n, 0.13)])], 1)
            mb.quads(q, uv, M.CURB, 0.0)
        strip(d_curb, side * SIDEWALK_OUTER_M, SIDEWALK_Z_M, SIDEWALK_Z_M, M.SIDEWALK)

    # --- ground: one big lawn square (the road and sidewalks sit slightly above it)
    ext = float(np.abs(cl.xy).max() + 80.0)
    mb.quads(np.array([[[-ext, -ext, 0], [ext, -ext, 0], [ext, ext, 0], [-ext, ext, 0]]]),
             np.array([[[-ext, -ext], [ext, -ext], [ext, ext], [-ext, ext]]]), M.LAWN, 0.0)

    # --- buildings along both sides
    for side in (-1.0, 1.0):
        s = rng.uniform(0, 10)
        while s < cl.length_m:
            urban = np.sin(2 * np.pi * s / cl.length_m * 2 + seed) > -0.2
            w = rng.uniform(12, 26) if urban else rng.uniform(8, 13)
            depth = rng.uniform(10, 16) if urban else rng.uniform(8, 11)
            setback = rng.uniform(10, 12) if urban else rng.uniform(14, 18)
            s_mid = s + w / 2
            xy, tg = cl.frame(s_mid, side * (setback + depth / 2))
            yaw = float(np.arctan2(tg[1], tg[0]))
            pl = Placed(np.asarray(xy), yaw, (w / 2, depth / 2))
            if _footprint_clear(tree, pl, setback - 0.5) and not any(_overlap(pl, o, 1.5) for o in placed):
                placed.append(pl)
                param = float(rng.random())
                if urban:
                    h = float(rng.choice([2, 3, 4, 5, 6, 7]) * rng.uniform(3.0, 3.5) + 0.5)
                    mb.box(xy, 0.0, yaw, (w, depth, h), M.BUILDING, M.ROOF, param)
                else:
                    h = float(rng.uniform(5.5, 7.0))
                    _house(mb, pl, h, param, rng)
                    _front_yard(mb, cl, s, w, side, setback, rng)
                if rng.random() < 0.5:
                    _tree(mb, cl.frame(s + rng.uniform(0, w), side * (setback - rng.uniform(2.5, 4.0)))[0], rng)
            s += w + (rng.uniform(2, 6) if urban else rng.uniform(4, 10))

    # --- park in the middle: trees and bushes wherever there is room
    inner = cl.xy.min(0) + 12, cl.xy.max(0) - 12
    for _ in range(int(cl.length_m / 6)):
        p = rng.uniform(inner[0], inner[1])
        if tree.query(p)[0] < 11:
            continue
        probe = Placed(p, 0.0, (2.5, 2.5))
        if any(_overlap(probe, o, 1.0) for o in placed):
            continue
        placed.append(probe)
        if rng.random() < 0.6:
            _tree(mb, p, rng)
        else:
            _bush(mb, p, rng)

    # --- street furniture: lamps (regular, alternating sides), street trees, signs
    n_lamps = max(2, int(round(cl.length_m / 25.0)))
    lamp_spacing = cl.length_m / n_lamps
    for k in range(n_lamps):
        side = 1.0 if k % 2 == 0 else -1.0
        xy, tg = cl.frame(k * lamp_spacing, side * 5.6)
        _lamp(mb, xy, tg, side, float(rng.random()))
    for side in (-1.0, 1.0):
        s = rng.uniform(0, 15)
        while s < cl.length_m:
            if rng.random() < 0.55 and abs(((s / lamp_spacing) % 1.0) - 0.0) > 0.1:
                _tree(mb, cl.frame(s, side * 7.2)[0], rng, street=True)
            s += rng.uniform(10, 20)
        s = rng.uniform(0, 40)
        while s < cl.length_m:
            xy, tg = cl.frame(s, side * 5.5)
            _sign(mb, xy, tg, side, float(rng.random()))
            s += rng.uniform(35, 80)

    # --- parked cars and bins of the mapping traversal
    dyn: list[DynamicObject] = []
    for side in (-1.0, 1.0):
        s = rng.uniform(0, 10)
        while s < cl.length_m:
            if rng.random() < 0.6:
                dyn.append(DynamicObject(M.CAR, s, side * 4.05, float(rng.random())))
            s += rng.uniform(5.5, 9.0)
        s = rng.uniform(0, 20)
        while s < cl.length_m:
            dyn.append(DynamicObject(M.BIN, s, side * 7.6, float(rng.random())))
            s += rng.uniform(15, 45)
    return StaticScene(mb.build(), cl, tuple(dyn), lamp_spacing, ext)


def _house(mb: MeshBuilder, pl: Placed, wall_h: float, param: float, rng: np.random.Generator) -> None:
    """Suburban house: box walls and a pitched roof (ridge along the facade) with gable walls."""
    w, depth = pl.half[0] * 2, pl.half[1] * 2
    mb.box(pl.xy, 0.0, pl.yaw, (w, depth, wall_h), M.BUILDING, None, param, wall_h)
    ridge = wall_h + rng.uniform(2.0, 3.5)
    c, s = np.cos(pl.yaw), np.sin(pl.yaw)
    ex, ey = np.array([c, s]), np.array([-s, c])
    o = 0.4  # eaves overhang

    def P(x: float, y: float, z: float) -> list[float]:
        q = pl.xy + ex * x + ey * y
        return [q[0], q[1], z]

    hx, hy = w / 2 + o, depth / 2 + o
    slope_len = float(np.hypot(hy, ridge - wall_h))
    roof = np.array([[P(-hx, -hy, wall_h), P(hx, -hy, wall_h), P(hx, 0, ridge), P(-hx, 0, ridge)],
                     [P(hx, hy, wall_h), P(-hx, hy, wall_h), P(-hx, 0, ridge), P(hx, 0, ridge)]])
    uv = np.array([[[0, 0], [2 * hx, 0], [2 * hx, slope_len], [0, slope_len]]] * 2)
    mb.quads(roof, uv, M.ROOF, param, wall_h)
    hx = w / 2
    for sx in (-1, 1):
        tri = np.array([P(sx * hx, -sx * depth / 2, wall_h), P(sx * hx, sx * depth / 2, wall_h), P(sx * hx, 0, ridge)])
        n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        n /= np.linalg.norm(n)
        uv_t = np.array([[0, wall_h], [depth, wall_h], [depth / 2, ridge]])
        mb.triangles(tri, np.repeat(n[None], 3, 0), uv_t, M.BUILDING, param, ridge)


def _front_yard(mb: MeshBuilder, cl: Centerline, s0: float, w: float, side: float, setback: float,
                rng: np.random.Generator) -> None:
    """Fence or hedge along the property front, with a gap for the path."""
    d = side * (SIDEWALK_OUTER_M + 0.6)
    gate = rng.uniform(0.3, 0.7) * w
    kind = M.FENCE if rng.random() < 0.6 else M.BUSH
    param = float(rng.random())
    for a, b in ((0.0, gate - 0.6), (gate + 0.6, w)):
        if b - a < 0.5:
            continue
        ss = np.arange(s0 + a, s0 + b, 2.0)
        for s_i in ss:
            s_j = min(s_i + 2.0, s0 + b)
            xy0, _ = cl.frame(s_i, d)
            xy1, _ = cl.frame(s_j, d)
            mid, vec = (xy0 + xy1) / 2, xy1 - xy0
            ln = float(np.linalg.norm(vec))
            yaw = float(np.arctan2(vec[1], vec[0]))
            if kind == M.FENCE:
                mb.box(mid, 0.0, yaw, (ln, 0.06, 1.2), M.FENCE, M.FENCE, param, 1.2)
            else:
                mb.box(mid, 0.0, yaw, (ln, 0.8, 1.1), M.BUSH, M.BUSH, param, 1.1)
    if rng.random() < 0.6:
        _bush(mb, cl.frame(s0 + rng.uniform(1, w - 1), side * (setback - rng.uniform(1.5, 3.0)))[0], rng)


def _tree(mb: MeshBuilder, xy: np.ndarray, rng: np.random.Generator, street: bool = False) -> None:
    param = float(rng.random())
    trunk_h = rng.uniform(2.2, 3.5) if street else rng.uniform(1.8, 3.5)
    r = rng.uniform(0.12, 0.25)
    mb.cylinder(xy, 0.0, r, trunk_h + 1.0, M.TRUNK, param, sides=6, radius_top=r * 0.6)
    crown_r = rng.uniform(1.6, 2.6) if street else rng.uniform(1.8, 3.5)
    zc = trunk_h + crown_r * 0.8
    mb.ellipsoid(np.array([xy[0], xy[1], zc]), np.array([crown_r, crown_r, crown_r * 0.9]), M.FOLIAGE, param)
    if rng.random() < 0.5:
        off = rng.normal(0, 0.5, 2)
        mb.ellipsoid(np.array([xy[0] + off[0], xy[1] + off[1], zc + crown_r * 0.6]),
                     np.array([crown_r, crown_r, crown_r * 0.8]) * 0.7, M.FOLIAGE, param)


def _bush(mb: MeshBuilder, xy: np.ndarray, rng: np.random.Generator) -> None:
    r = rng.uniform(0.6, 1.3)
    mb.ellipsoid(np.array([xy[0], xy[1], r * 0.5]), np.array([r * 1.3, r, r * 0.9]), M.BUSH, float(rng.random()))


def _lamp(mb: MeshBuilder, xy: np.ndarray, tg: np.ndarray, side: float, param: float) -> None:
    """Street lamp: pole at the curb with an arm over the road and a lamp head."""
    mb.cylinder(xy, SIDEWALK_Z_M, 0.09, 6.5, M.POLE, param, sides=6, radius_top=0.06)
    n = np.array([-tg[1], tg[0]]) * side  # towards the inside of the sidewalk side
    arm_mid = xy - n * 0.8
    yaw = float(np.arctan2(-n[1], -n[0]))
    mb.box(arm_mid, SIDEWALK_Z_M + 6.4, yaw, (1.6, 0.08, 0.08), M.POLE, M.POLE, param)
    mb.box(xy - n * 1.6, SIDEWALK_Z_M + 6.2, yaw, (0.6, 0.3, 0.2), M.LAMP, M.LAMP, param)


def _sign(mb: MeshBuilder, xy: np.ndarray, tg: np.ndarray, side: float, param: float) -> None:
    """Traffic sign facing oncoming traffic."""
    mb.cylinder(xy, SIDEWALK_Z_M, 0.04, 2.6, M.POLE, param, sides=6)
    yaw = float(np.arctan2(tg[1], tg[0])) + np.pi / 2
    mb.box(xy, SIDEWALK_Z_M + 2.0, yaw, (0.7, 0.04, 0.7), M.SIGN, M.SIGN, param, 0.7)


def dynamic_objects(scene: StaticScene, seed: int, index: int, is_mapping: bool) -> tuple[DynamicObject, ...]:
    """Movable objects of one traversal: the mapping traversal keeps the base set; the others
    move, remove, replace and add some, deterministically from (seed, traversal index)."""
    if is_mapping:
        return scene.dynamic
    rng = np.random.default_rng([seed, 2, index])
    out = []
    for o in scene.dynamic:
        r = rng.random()
        if r < 0.2:
            continue  # removed
        if r < 0.5:
            o = DynamicObject(o.kind, o.s + rng.uniform(-3, 3), o.d, o.param)
        if o.kind == M.CAR and rng.random() < 0.25:
            o = DynamicObject(o.kind, o.s, o.d, float(rng.random()))  # a different car
        out.append(o)
    for _ in range(len(scene.dynamic) // 6):  # added objects
        kind = M.CAR if rng.random() < 0.7 else M.BIN
        side = rng.choice([-1.0, 1.0])
        d = side * (4.05 if kind == M.CAR else 7.6)
        s = rng.uniform(0, scene.centerline.length_m)
        if all(abs(s - o.s) > (5.0 if kind == M.CAR else 1.5) or o.d != d for o in out):
            out.append(DynamicObject(kind, s, d, float(rng.random())))
    return tuple(out)


def dynamic_mesh(scene: StaticScene, objects: tuple[DynamicObject, ...]) -> np.ndarray:
    mb = MeshBuilder()
    cl = scene.centerline
    for o in objects:
        xy, tg = cl.frame(o.s, o.d)
        yaw = float(np.arctan2(tg[1], tg[0]))
        if o.kind == M.CAR:
            ln, wd = 4.2 + 0.5 * o.param, 1.8
            mb.box(xy, 0.3, yaw, (ln, wd, 0.75), M.CAR, M.CAR, o.param, 0.75)
            fwd = np.array([np.cos(yaw), np.sin(yaw)])
            mb.box(xy - fwd * 0.2, 1.05, yaw, (ln * 0.55, wd * 0.9, 0.5), M.CAR_GLASS, M.CAR, o.param, 0.5)
            lat = np.array([-np.sin(yaw), np.cos(yaw)])
            for a in (-1, 1):
                for b in (-1, 1):
                    mb.box(xy + fwd * a * ln * 0.32 + lat * b * (wd / 2 - 0.05), ROAD_Z_M, yaw,
                           (0.62, 0.22, 0.5), M.CAR, M.CAR, -1.0, 0.5)  # wheels: param -1 = tyre
        else:
            mb.box(xy, SIDEWALK_Z_M, yaw, (0.6, 0.6, 1.0), M.BIN, M.BIN, o.param, 1.0)
    return mb.build()
