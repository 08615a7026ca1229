"""Headless OpenGL renderer (moderngl on Mesa llvmpipe through EGL): RGB, depth and ids in one pass.

One draw writes three render targets: colour (RGBA8), metric depth (R32F, the optical-axis
distance z_cam in metres, interpolated per fragment: exact for planar triangles and free of
depth-buffer quantization) and the surface id (R16UI). Textures are procedural (noise, bricks,
windows, lane markings) so the scene costs few triangles and no downloaded assets.

Pixel convention is COLMAP's: pixel (i, j) has its centre at (i + 0.5, j + 0.5); the projection
matrix below is built from (fx, fy, cx, cy) so that a camera-frame point (x right, y down,
z forward) lands exactly at u = fx x/z + cx, v = fy y/z + cy, row 0 at the top of the image.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from segloc_core.errors import DependencyError, require
from segloc_core.world import materials as M
from segloc_core.world.conditions import Condition
from segloc_core.world.scene import LANE_LINE_D_M, VERTEX_FLOATS, StaticScene

NEAR_M = 0.2
#: Materials in drawing order: big occluders first, then what they hide, then surfaces whose
#: shaders discard fragments (no early depth test for those).
DRAW_ORDER = (M.BUILDING, M.ROOF, M.CAR, M.CAR_GLASS, M.ROAD, M.SIDEWALK, M.CURB, M.BIN, M.POLE,
              M.LAMP, M.SIGN, M.TRUNK, M.BUSH, M.LAWN, M.FENCE, M.FOLIAGE)
_ATTRIBUTES = (("in_pos", 3), ("in_nrm", 3), ("in_uv", 2), ("in_mat", 1), ("in_param", 1), ("in_param2", 1))
FAR_M = 400.0


class RenderedFrame(NamedTuple):
    rgb: np.ndarray    # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres along the optical axis, 0 where sky
    ids: np.ndarray    # (H, W) uint16 materials id


def gl_projection(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                  near: float = NEAR_M, far: float = FAR_M) -> np.ndarray:
    """Clip-from-camera matrix for the OpenCV optical frame, COLMAP pixel centres, image row 0
    at the top (the read-back is flipped to row-major top-down)."""
    a = (far + near) / (far - near)
    b = -2 * far * near / (far - near)
    return np.array([[2 * fx / width, 0, 2 * cx / width - 1, 0],
                     [0, -2 * fy / height, 1 - 2 * cy / height, 0],
                     [0, 0, a, b],
                     [0, 0, 1, 0]], dtype=np.float64)


_COMMON = """
float hash12(vec2 p) { vec3 p3 = fract(vec3(p.xyx) * .1031); p3 += dot(p3, p3.yzx + 33.33);
                        return fract((p3.x + p3.y) * p3.z); }
float vnoise(vec2 p) { vec2 i = floor(p); vec2 f = fract(p); vec2 u = f * f * (3. - 2. * f);
  return mix(mix(hash12(i), hash12(i + vec2(1, 0)), u.x),
             mix(hash12(i + vec2(0, 1)), hash12(i + vec2(1, 1)), u.x), u.y); }
float fbm(vec2 p) { return 0.65 * vnoise(p) + 0.35 * vnoise(p * 2.7 + 7.1); }
uniform float u_exposure;
uniform float u_noise;
uniform float u_frame_seed;
vec3 finish(vec3 c) {
  c = 1.0 - exp(-c * u_exposure);              // soft tone curve, like a camera's
  c = pow(clamp(c, 0.0, 1.0), vec3(1.0 / 2.2));
  float n = hash12(gl_FragCoord.xy + u_frame_seed) + hash12(gl_FragCoord.yx * 1.37 + u_frame_seed) - 1.0;
  return c + vec3(n * u_noise * 2.45 / 255.0);  // sum of two uniforms: sigma = 1/sqrt(6)
}
"""

_VS = """
#version 330
uniform mat4 u_view;   // T_cam_world
uniform mat4 u_proj;
uniform mat4 u_light_tex;  // world -> shadow-map texture coordinates and depth in [0, 1]
in vec3 in_pos; in vec3 in_nrm; in vec2 in_uv; in float in_param; in float in_param2;
out vec3 v_world; out vec3 v_nrm; out vec2 v_uv; out float v_zcam; out vec3 v_light;
flat out float v_param; flat out float v_param2;
void main() {
  vec4 pc = u_view * vec4(in_pos, 1.0);
  v_world = in_pos; v_nrm = in_nrm; v_uv = in_uv; v_zcam = pc.z;
  v_light = (u_light_tex * vec4(in_pos + in_nrm * 0.06, 1.0)).xyz;  // normal offset against acne
  v_param = in_param; v_param2 = in_param2;
  gl_Position = u_proj * pc;
}
"""

_FS = """
#version 330
in vec3 v_world; in vec3 v_nrm; in vec2 v_uv; in float v_zcam; in vec3 v_light;
uniform sampler2DShadow u_shadow;
flat in float v_param; flat in float v_param2;
layout(location = 0) out vec4 o_rgb;
layout(location = 1) out float o_depth;
layout(location = 2) out uint o_id;
uniform vec3 u_sun_dir; uniform vec3 u_sun; uniform vec3 u_amb_sky; uniform vec3 u_amb_ground;
uniform vec3 u_fog; uniform float u_fog_density;
uniform vec3 u_fol_a; uniform vec3 u_fol_b; uniform vec3 u_lawn;
uniform float u_snow; uniform float u_leaves; uniform float u_bare; uniform float u_wet; uniform float u_night;
uniform float u_window_seed;
uniform vec3 u_cam_pos; uniform vec3 u_cam_fwd; uniform float u_lamp_spacing;
COMMON
const vec3 SNOW = vec3(0.85, 0.87, 0.9);
vec3 leaf_litter(vec3 base, vec2 p) {
  float n = vnoise(p * 3.1);
  vec3 leaf = mix(vec3(0.55, 0.22, 0.04), vec3(0.7, 0.5, 0.1), hash12(floor(p * 3.1)));
  return mix(base, leaf, u_leaves * smoothstep(0.45, 0.6, n));
}
void main() {
  const int m = MATERIAL;   // one program per material: the other branches compile out
  uint id = uint(m);
  vec3 N = normalize(v_nrm);
  vec2 wp = v_world.xy;
  vec3 alb = vec3(0.5);
  float emit = 0.0; vec3 emit_rgb = vec3(0.0);
  float snow_here = 0.0;   // how much of u_snow this surface takes
  float gloss = 0.0;
  if (m == ROAD) {
    float s = v_uv.x; float ad = abs(v_uv.y);
    alb = vec3(0.16, 0.16, 0.17) * (0.75 + 0.5 * fbm(wp * 1.3));
    bool mark = (ad < 0.08 && fract(s / 6.0) < 0.5) || abs(ad - LANE_D) < 0.07;
    if (mark) { id = uint(MARKING); alb = vec3(0.8, 0.8, 0.76); }
    alb = mix(alb, alb * 0.55, u_wet);
    gloss = u_wet;
    snow_here = smoothstep(3.2, 4.6, ad) * smoothstep(0.3, 0.6, vnoise(wp * 0.9));
    alb = mix(alb, leaf_litter(alb, wp), smoothstep(3.5, 4.9, ad));
  } else if (m == SIDEWALK) {
    vec2 t = v_uv * vec2(2.0, 2.0);
    vec2 f = fract(t);
    float joint = step(0.06, f.x) * step(0.06, f.y);
    alb = vec3(0.52, 0.5, 0.47) * (0.85 + 0.3 * hash12(floor(t))) * mix(0.6, 1.0, joint);
    alb = mix(alb, alb * 0.6, u_wet);
    alb = leaf_litter(alb, wp);
    snow_here = 0.7 + 0.3 * vnoise(wp * 2.0);
  } else if (m == CURB) {
    alb = vec3(0.6, 0.6, 0.58) * (0.85 + 0.15 * vnoise(v_uv * 4.0));
  } else if (m == LAWN) {
    float n = fbm(wp * 0.7);
    alb = u_lawn * (0.7 + 0.6 * n) * (0.9 + 0.2 * vnoise(wp * 9.0));
    alb = leaf_litter(alb, wp);
    snow_here = 1.0;
  } else if (m == BUILDING) {
    float p = v_param;
    float fh = 3.0 + 0.5 * hash12(vec2(p, 1.0));
    float ws = 2.4 + 1.6 * hash12(vec2(p, 2.0));
    vec2 cell = vec2(v_uv.x / ws, v_uv.y / fh);
    vec2 ci = floor(cell); vec2 f = fract(cell);
    float style = hash12(vec2(p, 3.0));
    vec3 wall = mix(vec3(0.55, 0.25, 0.16), vec3(0.78, 0.72, 0.6), hash12(vec2(p, 4.0)));
    if (style < 0.45) {  // bricks
      vec2 b = vec2(v_uv.x / 0.25 + 0.5 * mod(floor(v_uv.y / 0.08), 2.0), v_uv.y / 0.08);
      vec2 bf = fract(b);
      float mortar = step(0.08, bf.x) * step(0.15, bf.y);
      wall = mix(vec3(0.62, 0.6, 0.56), wall * (0.8 + 0.4 * hash12(floor(b))), mortar);
    } else {
      wall *= 0.85 + 0.3 * fbm(v_uv * 0.8 + p * 13.0);
    }
    alb = wall;
    bool top_ok = (ci.y + 1.0) * fh < v_param2 - 0.3;
    if (ci.y < 1.0) {
      if (hash12(vec2(ci.x, p * 7.0)) > 0.7 && f.x > 0.3 && f.x < 0.7 && f.y < 0.75) {
        id = uint(DOOR); alb = mix(vec3(0.25, 0.15, 0.08), vec3(0.3, 0.32, 0.35), hash12(vec2(p, 5.0)));
      } else if (f.x > 0.15 && f.x < 0.85 && f.y > 0.3 && f.y < 0.8) { id = uint(WINDOW); }
    } else if (top_ok && f.x > 0.22 && f.x < 0.78 && f.y > 0.28 && f.y < 0.78) { id = uint(WINDOW); }
    if (id == uint(WINDOW)) {
      float frame = step(0.04, abs(f.x - 0.5)) ;
      alb = mix(vec3(0.08, 0.1, 0.13), vec3(0.25, 0.3, 0.36), 0.5 + 0.5 * N.z + 0.3 * hash12(ci + p));
      alb *= mix(0.5, 1.0, frame);
      gloss = 0.5;
      if (hash12(ci + vec2(p * 31.0, 9.0 + u_window_seed)) > 0.5) { emit = u_night * 1.2; emit_rgb = vec3(1.0, 0.75, 0.4); }
    }
  } else if (m == ROOF) {
    alb = mix(vec3(0.35, 0.14, 0.1), vec3(0.3, 0.3, 0.32), hash12(vec2(v_param, 6.0)));
    alb *= 0.8 + 0.3 * vnoise(v_uv * vec2(4.0, 8.0));
    snow_here = 1.0;
  } else if (m == POLE) {
    alb = vec3(0.35, 0.37, 0.38);
  } else if (m == LAMP) {
    alb = vec3(0.6); emit = u_night * 4.0; emit_rgb = vec3(1.0, 0.85, 0.6);
  } else if (m == SIGN) {
    int k = int(v_param * 4.0);
    alb = k == 0 ? vec3(0.7, 0.08, 0.06) : k == 1 ? vec3(0.05, 0.2, 0.6) : k == 2 ? vec3(0.8, 0.65, 0.05) : vec3(0.8);
    if (abs(N.z) > 0.5) alb = vec3(0.4);
  } else if (m == FENCE) {
    float plank = fract(v_uv.x / 0.16);
    if (plank > 0.78 && v_uv.y < v_param2 - 0.15 && v_uv.y > 0.25 && abs(N.z) < 0.5) discard;
    alb = mix(vec3(0.45, 0.3, 0.17), vec3(0.75, 0.74, 0.7), step(0.6, v_param)) * (0.8 + 0.3 * vnoise(v_uv * vec2(8.0, 0.7)));
    snow_here = 0.5;
  } else if (m == TRUNK) {
    alb = vec3(0.25, 0.18, 0.12) * (0.7 + 0.5 * vnoise(v_uv * vec2(6.0, 1.5)));
  } else if (m == FOLIAGE || m == BUSH) {
    vec2 q = v_world.xy * 2.3 + v_world.z * vec2(1.7, -1.3);
    float n = vnoise(q) * 0.6 + vnoise(q * 2.9) * 0.4;
    if (m == FOLIAGE && u_bare > 0.5) {
      if (n < 0.6) discard;        // bare crown: twigs only
      alb = vec3(0.22, 0.18, 0.15);
    } else {
      vec3 tint = mix(u_fol_a, u_fol_b, hash12(vec2(v_param, 8.0)));
      if (m == BUSH) tint = mix(tint, u_lawn, 0.4) * 0.8;
      alb = tint * (0.55 + 0.8 * n);
    }
    snow_here = m == BUSH ? 0.8 : 0.5;
  } else if (m == CAR || m == CAR_GLASS) {
    int k = int(v_param * 6.0);
    vec3 body = k == 0 ? vec3(0.6, 0.05, 0.04) : k == 1 ? vec3(0.05, 0.1, 0.35) : k == 2 ? vec3(0.75)
              : k == 3 ? vec3(0.05) : k == 4 ? vec3(0.35, 0.36, 0.38) : vec3(0.1, 0.25, 0.12);
    alb = v_param < 0.0 ? vec3(0.03) : body;   // param < 0: tyres
    if (m == CAR_GLASS) alb = vec3(0.05, 0.07, 0.09) + 0.15 * max(N.z, 0.0);
    gloss = 0.6;
    snow_here = 0.9;
  } else if (m == BIN) {
    alb = mix(vec3(0.1, 0.3, 0.12), vec3(0.3, 0.3, 0.32), step(0.5, v_param));
    snow_here = 0.9;
  }
  // snow on upward-facing surfaces: appearance only, never the id
  float up = smoothstep(0.6, 0.9, N.z);
  alb = mix(alb, SNOW * (0.92 + 0.08 * vnoise(wp * 5.0)), clamp(u_snow * snow_here * up, 0.0, 1.0));
  // lighting: sun (Lambert), hemisphere ambient, crude contact darkening near the ground
  float ndl = max(dot(N, u_sun_dir), 0.0);
  vec3 amb = mix(u_amb_ground, u_amb_sky, N.z * 0.5 + 0.5);
  float ao = mix(1.0, 0.55 + 0.45 * smoothstep(0.0, 1.5, v_world.z), 1.0 - abs(N.z));
  float lit = ndl > 0.0 ? texture(u_shadow, v_light - vec3(0.0, 0.0, 0.0004)) : 0.0;
  vec3 light = u_sun * ndl * lit + amb * ao;
  // night: street lamps (light pools on road and sidewalk) and the ego vehicle's headlights
  vec3 d = v_world - u_cam_pos;
  float dist = length(d);
  if (u_night > 0.0) {
    if (m == ROAD || m == MARKING || m == SIDEWALK || m == CURB) {
      float k = floor(v_uv.x / u_lamp_spacing + 0.5);
      float side = mod(k, 2.0) < 0.5 ? 1.0 : -1.0;
      vec2 dl = vec2(v_uv.x - k * u_lamp_spacing, v_uv.y - side * 4.0);
      light += u_night * vec3(1.0, 0.8, 0.55) * 1.3 / (1.0 + 0.12 * dot(dl, dl));
    }
    float cone = max(dot(d / max(dist, 1e-3), u_cam_fwd), 0.0);
    light += u_night * vec3(1.0, 0.95, 0.85) * 30.0 * pow(cone, 12.0) / (4.0 + dist * dist) * max(dot(N, -d / max(dist, 1e-3)), 0.0);
  }
  vec3 c = alb * light + emit * emit_rgb;
  // glossy surfaces (wet road, glass) pick up the sky at grazing angles
  float fres = pow(1.0 - abs(dot(N, -d / max(dist, 1e-3))), 4.0);
  c = mix(c, u_fog * 0.9, gloss * fres * 0.5);
  c = mix(c, u_fog, 1.0 - exp(-u_fog_density * dist));
  o_rgb = vec4(finish(c), 1.0);
  o_depth = v_zcam;
  o_id = id;
}
"""

_SHADOW_VS = """
#version 330
uniform mat4 u_light_clip;
in vec3 in_pos;
void main() { gl_Position = u_light_clip * vec4(in_pos, 1.0); }
"""

_SHADOW_FS = """
#version 330
void main() {}
"""

SHADOW_MAP_PX = 2048


def sun_matrices(sun_dir: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic light projection covering the world box [lo, hi] (3,) seen from the sun:
    (clip-from-world for the shadow pass, texture-from-world for the lookup)."""
    f = -np.asarray(sun_dir, np.float64)
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r = r / np.linalg.norm(r) if np.linalg.norm(r) > 1e-6 else np.array([1.0, 0.0, 0.0])
    u = np.cross(r, f)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    B = np.stack([r, u, f])
    pc = corners @ B.T
    mn, mx = pc.min(0), pc.max(0)
    S = np.eye(4)
    S[:3, :3] = np.diag(2.0 / (mx - mn)) @ B
    S[:3, 3] = -(mx + mn) / (mx - mn)
    bias = np.array([[0.5, 0, 0, 0.5], [0, 0.5, 0, 0.5], [0, 0, 0.5, 0.5], [0, 0, 0, 1.0]])
    return S, bias @ S


_SKY_VS = """
#version 330
in vec2 in_xy;
void main() { gl_Position = vec4(in_xy, 1.0, 1.0); }
"""

_SKY_FS = """
#version 330
layout(location = 0) out vec4 o_rgb;
layout(location = 1) out float o_depth;
layout(location = 2) out uint o_id;
uniform mat3 u_R_world_cam; uniform vec4 u_intr; uniform float u_height;
uniform vec3 u_sun_dir; uniform vec3 u_zenith; uniform vec3 u_horizon; uniform float u_clouds;
uniform float u_night;
COMMON
void main() {
  vec2 uv = vec2(gl_FragCoord.x, u_height - gl_FragCoord.y);
  vec3 ray = normalize(u_R_world_cam * vec3((uv.x - u_intr.z) / u_intr.x, (uv.y - u_intr.w) / u_intr.y, 1.0));
  float el = max(ray.z, 0.0);
  vec3 c = mix(u_horizon, u_zenith, pow(el, 0.5));
  float sd = max(dot(ray, u_sun_dir), 0.0);
  c += (1.0 - u_clouds) * vec3(1.0, 0.9, 0.7) * (pow(sd, 400.0) * 8.0 + pow(sd, 8.0) * 0.25) * step(0.0, u_sun_dir.z);
  vec2 cp = ray.xy / max(ray.z, 0.05) * 3.0;
  float cl = smoothstep(0.45 - 0.4 * u_clouds, 0.9, fbm(cp));
  vec3 cloud_col = mix(u_horizon * 1.1, u_zenith * 0.8 + u_horizon * 0.4, u_clouds);
  c = mix(c, cloud_col, cl * smoothstep(0.0, 0.15, ray.z));
  if (u_night > 0.5) c += vec3(step(0.997, hash12(floor(cp * 40.0)))) * 0.6 * smoothstep(0.05, 0.3, ray.z);
  o_rgb = vec4(finish(c), 1.0);
  o_depth = 0.0;
  o_id = 0u;
}
"""


def _defines(src: str, material: int = -1) -> str:
    """Insert the shared functions, the material id constants and the program's material."""
    src = src.replace("COMMON", _COMMON)
    consts = f"#define MATERIAL {material}\n"
    consts += "".join(f"const int {name.upper()} = {i};\n" for i, name in M.CLASS_NAMES.items())
    consts += f"const float LANE_D = {LANE_LINE_D_M};\n"
    head, rest = src.split("\n", 2)[1], src.split("\n", 2)[2]
    return f"{head}\n{consts}{rest}" if head.startswith("#version") else src


class Renderer:
    """Owns a headless GL context and renders frames of one static scene under any condition.

    llvmpipe runs a fragment shader's branches under SIMD masks, so an uber-shader would pay
    for every material on every pixel. Instead each material gets its own program, specialized
    at compile time (`MATERIAL`), and draws only its triangles; large occluders go first so the
    early depth test spares the rest. The static geometry is uploaded once; the movable objects
    of a traversal are swapped in with `set_dynamic`. Not thread-safe (one GL context)."""

    def __init__(self, scene: StaticScene, width: int, height: int) -> None:
        moderngl = require("moderngl")
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as exc:  # noqa: BLE001 - EGL/driver errors come in many types
            raise DependencyError(
                f"cannot create a headless OpenGL context through EGL ({exc}); install Mesa's "
                "EGL and DRI drivers (Debian: libegl1 libgl1-mesa-dri)") from exc
        self.scene = scene
        self.width, self.height = width, height
        ctx = self.ctx
        self._progs = {m: ctx.program(vertex_shader=_defines(_VS, m), fragment_shader=_defines(_FS, m))
                       for m in DRAW_ORDER}
        self.sky = ctx.program(vertex_shader=_SKY_VS, fragment_shader=_defines(_SKY_FS))
        self._static = self._vaos(scene.vertices)
        self._dynamic: dict = {}
        tri = np.array([-1, -1, 3, -1, -1, 3], np.float32)
        self._sky_vbo = ctx.buffer(tri.tobytes())
        self._sky_vao = ctx.vertex_array(self.sky, [(self._sky_vbo, "2f", "in_xy")])
        self.color = ctx.texture((width, height), 4, dtype="f1")
        self.depth = ctx.texture((width, height), 1, dtype="f4")
        self.ids = ctx.texture((width, height), 1, dtype="u2")
        self.zbuf = ctx.depth_renderbuffer((width, height))
        self.fbo = ctx.framebuffer([self.color, self.depth, self.ids], self.zbuf)
        self._set_all("u_lamp_spacing", scene.lamp_spacing_m)
        # sun shadows: one depth map per (condition, movable objects), rendered lazily
        self.shadow_prog = ctx.program(vertex_shader=_SHADOW_VS, fragment_shader=_SHADOW_FS)
        self.shadow_tex = ctx.depth_texture((SHADOW_MAP_PX, SHADOW_MAP_PX))
        self.shadow_tex.compare_func = "<="
        self.shadow_tex.repeat_x = self.shadow_tex.repeat_y = False
        self.shadow_tex.filter = (moderngl.NEAREST, moderngl.NEAREST)  # one fetch: llvmpipe samples in software
        self.shadow_fbo = ctx.framebuffer(depth_attachment=self.shadow_tex)
        self._set_all("u_shadow", 0)
        mats = scene.vertices[:, 8].round().astype(int)
        self._shadow_static = self._shadow_vao(scene.vertices[(mats != M.FOLIAGE) & (mats != M.LAWN)])
        self._shadow_crowns = self._shadow_vao(scene.vertices[mats == M.FOLIAGE])
        self._shadow_dynamic = None
        xy = scene.centerline.xy
        self._shadow_box = (np.array([*(xy.min(0) - 45.0), 0.0]), np.array([*(xy.max(0) + 45.0), 30.0]))
        self._condition: Condition | None = None
        self._shadow_dirty = True

    def _set_all(self, name: str, value, raw: bytes | None = None) -> None:
        """Set a uniform on every surface program that uses it (unused ones are compiled out)."""
        for prog in self._progs.values():
            u = prog.get(name, None)
            if u is None:
                continue
            if raw is not None:
                u.write(raw)
            else:
                u.value = value

    def _vaos(self, vertices: np.ndarray) -> dict:
        """material id -> vertex array of that material's triangles."""
        mats = vertices[:, 8].round().astype(int)
        out = {}
        for m in np.unique(mats):
            if int(m) not in self._progs:
                raise ValueError(f"material {m} has no shader program")
            prog = self._progs[int(m)]
            vbo = self.ctx.buffer(np.ascontiguousarray(vertices[mats == m], np.float32).tobytes())
            fmt, names = [], []
            for name, n in _ATTRIBUTES:
                if name in prog:
                    fmt.append(f"{n}f")
                    names.append(name)
                else:
                    fmt.append(f"{4 * n}x")
            out[int(m)] = self.ctx.vertex_array(prog, [(vbo, " ".join(fmt), *names)])
        return out

    def _shadow_vao(self, vertices: np.ndarray):
        if len(vertices) == 0:
            return None
        vbo = self.ctx.buffer(np.ascontiguousarray(vertices, np.float32).tobytes())
        return self.ctx.vertex_array(self.shadow_prog, [(vbo, f"3f {4 * (VERTEX_FLOATS - 3)}x", "in_pos")])

    def set_dynamic(self, vertices: np.ndarray) -> None:
        """Replace the movable objects (parked cars, bins) of the current traversal."""
        if vertices.ndim != 2 or vertices.shape[1] != VERTEX_FLOATS:
            raise ValueError(f"vertices must be (N, {VERTEX_FLOATS}), got {vertices.shape}")
        for vao in self._dynamic.values():
            vao.release()
        self._dynamic = self._vaos(vertices)
        if self._shadow_dynamic is not None:
            self._shadow_dynamic.release()
        self._shadow_dynamic = self._shadow_vao(vertices)
        self._shadow_dirty = True

    def _render_shadow_map(self) -> None:
        """Depth of the scene seen from the sun (bare winter crowns cast no shadow)."""
        c = self._condition
        clip, tex = sun_matrices(c.sun_dir(), *self._shadow_box)
        self.shadow_prog["u_light_clip"].write(clip.T.astype("f4").tobytes())
        self._set_all("u_light_tex", None, tex.T.astype("f4").tobytes())
        ctx = self.ctx
        self.shadow_fbo.use()
        ctx.viewport = (0, 0, SHADOW_MAP_PX, SHADOW_MAP_PX)
        ctx.enable(ctx.DEPTH_TEST)
        ctx.depth_func = "<"
        self.shadow_fbo.clear(depth=1.0)
        ctx.polygon_offset = (2.0, 4.0)
        vaos = [self._shadow_static, self._shadow_dynamic] + ([] if c.bare_trees else [self._shadow_crowns])
        for vao in vaos:
            if vao is not None:
                vao.render()
        ctx.polygon_offset = (0.0, 0.0)
        self._shadow_dirty = False

    def set_condition(self, c: Condition) -> None:
        self._condition = c
        self._shadow_dirty = True
        sun = tuple(c.sun_dir())
        common = {"u_sun_dir": sun, "u_exposure": c.exposure, "u_noise": c.noise_sigma, "u_night": c.night}
        surface = {"u_sun": c.sun_rgb, "u_amb_sky": c.sky_ambient_rgb, "u_amb_ground": c.ground_ambient_rgb,
                   "u_fog": c.sky_horizon_rgb, "u_fog_density": c.fog_density, "u_fol_a": c.foliage_rgb[0],
                   "u_fol_b": c.foliage_rgb[1], "u_lawn": c.lawn_rgb, "u_snow": c.snow, "u_leaves": c.leaves,
                   "u_bare": 1.0 if c.bare_trees else 0.0, "u_wet": c.wet,
                   "u_window_seed": c.window_seed}
        for k, v in {**common, **surface}.items():
            self._set_all(k, v)
        sky = {**common, "u_zenith": c.sky_zenith_rgb, "u_horizon": c.sky_horizon_rgb, "u_clouds": c.clouds}
        for k, v in sky.items():
            u = self.sky.get(k, None)
            if u is not None:
                u.value = v

    def render(self, T_cam_world: np.ndarray, intrinsics: tuple[float, float, float, float],
               frame_seed: float = 0.0) -> RenderedFrame:
        """Render one frame. T_cam_world: (4,4) world->camera (OpenCV optical frame);
        intrinsics: PINHOLE (fx, fy, cx, cy) in COLMAP pixel convention."""
        if self._condition is None:
            raise ValueError("call set_condition before render")
        if self._shadow_dirty:
            self._render_shadow_map()
        fx, fy, cx, cy = intrinsics
        w, h = self.width, self.height
        T = np.asarray(T_cam_world, np.float64)
        R_wc = T[:3, :3].T
        cam_pos = -R_wc @ T[:3, 3]
        proj = gl_projection(fx, fy, cx, cy, w, h)
        # moderngl takes matrices column-major
        self._set_all("u_view", None, T.T.astype("f4").tobytes())
        self._set_all("u_proj", None, proj.T.astype("f4").tobytes())
        self._set_all("u_cam_pos", tuple(cam_pos))
        self._set_all("u_cam_fwd", tuple(R_wc[:, 2]))
        self._set_all("u_frame_seed", float(frame_seed))
        s = self.sky
        s["u_R_world_cam"].write(R_wc.T.astype("f4").tobytes())
        s["u_intr"].value = (fx, fy, cx, cy)
        s["u_height"].value = float(h)
        s["u_frame_seed"].value = float(frame_seed)
        ctx = self.ctx
        self.fbo.use()
        ctx.viewport = (0, 0, w, h)
        ctx.enable(ctx.DEPTH_TEST)
        ctx.disable(ctx.CULL_FACE)
        ctx.depth_func = "<="
        self.fbo.clear(depth=1.0)
        self.shadow_tex.use(location=0)
        for m in DRAW_ORDER:
            for vaos in (self._static, self._dynamic):
                if m in vaos:
                    vaos[m].render()
        self._sky_vao.render()
        rgb = np.frombuffer(self.fbo.read(components=3, attachment=0, alignment=1), np.uint8).reshape(h, w, 3)
        depth = np.frombuffer(self.depth.read(alignment=1), np.float32).reshape(h, w)
        ids = np.frombuffer(self.ids.read(alignment=1), np.uint16).reshape(h, w)
        return RenderedFrame(rgb[::-1].copy(), depth[::-1].copy(), ids[::-1].copy())

    def release(self) -> None:
        self.ctx.release()
