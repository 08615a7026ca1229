"""Appearance conditions: lighting, season and sensor settings fed to the shaders as uniforms.

A condition changes how surfaces look (sun, sky, foliage colour, snow, leaves, lit windows,
sensor noise), never where they are; the one structural exception is winter's bare crowns,
which let the background show through (`bare_trees`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Condition:
    name: str
    sun_azimuth_deg: float      # direction towards the sun, from +x counter-clockwise
    sun_elevation_deg: float
    sun_rgb: tuple[float, float, float]       # direct light (linear)
    sky_ambient_rgb: tuple[float, float, float]
    ground_ambient_rgb: tuple[float, float, float]
    sky_zenith_rgb: tuple[float, float, float]
    sky_horizon_rgb: tuple[float, float, float]
    clouds: float               # 0 clear .. 1 overcast
    foliage_rgb: tuple[tuple[float, float, float], tuple[float, float, float]]  # two tints per tree
    lawn_rgb: tuple[float, float, float]
    snow: float                 # 0..1 snow cover on upward surfaces
    leaves: float               # 0..1 fallen leaves on the ground
    bare_trees: bool
    wet: float                  # 0..1 darker, glossier road
    night: float                # 0..1 lit windows, street lamps, headlights
    exposure: float
    noise_sigma: float          # sensor noise, in 8-bit grey levels (1 sigma)
    fog_density: float          # per metre
    window_seed: float = 0.0    # which windows are lit at night (another evening, other windows)

    def sun_dir(self) -> np.ndarray:
        az, el = np.radians(self.sun_azimuth_deg), np.radians(self.sun_elevation_deg)
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("summer", 35, 55, (2.6, 2.45, 2.2), (0.42, 0.5, 0.65), (0.28, 0.26, 0.22),
              (0.18, 0.38, 0.78), (0.62, 0.75, 0.9), 0.15,
              ((0.10, 0.32, 0.06), (0.20, 0.40, 0.08)), (0.16, 0.38, 0.08),
              0.0, 0.0, False, 0.0, 0.0, 1.0, 1.0, 0.0015),
    Condition("overcast", 0, 60, (0.35, 0.35, 0.36), (1.0, 1.02, 1.06), (0.45, 0.45, 0.44),
              (0.55, 0.57, 0.6), (0.72, 0.73, 0.75), 1.0,
              ((0.12, 0.26, 0.08), (0.18, 0.30, 0.10)), (0.18, 0.32, 0.10),
              0.0, 0.0, False, 0.7, 0.0, 1.0, 1.5, 0.006),
    Condition("autumn", 210, 22, (2.5, 1.9, 1.3), (0.38, 0.4, 0.5), (0.3, 0.22, 0.15),
              (0.25, 0.4, 0.7), (0.85, 0.72, 0.55), 0.35,
              ((0.62, 0.24, 0.04), (0.75, 0.55, 0.08)), (0.32, 0.34, 0.10),
              0.0, 0.7, False, 0.2, 0.0, 1.0, 1.5, 0.003),
    Condition("winter", 160, 15, (1.6, 1.55, 1.5), (0.75, 0.8, 0.92), (0.6, 0.62, 0.66),
              (0.45, 0.55, 0.72), (0.82, 0.85, 0.9), 0.6,
              ((0.30, 0.25, 0.2), (0.28, 0.24, 0.2)), (0.30, 0.30, 0.22),
              0.9, 0.0, True, 0.3, 0.0, 0.9, 1.5, 0.004),
    Condition("night", 250, -12, (0.0, 0.0, 0.0), (0.02, 0.025, 0.05), (0.012, 0.012, 0.015),
              (0.005, 0.008, 0.02), (0.04, 0.04, 0.07), 0.2,
              ((0.10, 0.30, 0.06), (0.18, 0.36, 0.08)), (0.16, 0.36, 0.08),
              0.0, 0.0, False, 0.2, 1.0, 2.5, 8.0, 0.002),
    # Training only (never a traversal of the default world): an evening after sunset, lamps on and
    # other windows lit than the night traversal's; geometry training renders it at the training
    # frames' poses (`GeometryConfig.extra_conditions`) so the network sees lamp-lit scenes.
    Condition("dusk", 280, -5, (0.0, 0.0, 0.0), (0.07, 0.07, 0.1), (0.035, 0.03, 0.03),
              (0.04, 0.05, 0.13), (0.3, 0.2, 0.22), 0.4,
              ((0.12, 0.30, 0.06), (0.20, 0.36, 0.08)), (0.18, 0.34, 0.09),
              0.0, 0.0, False, 0.1, 0.8, 2.0, 6.0, 0.003, window_seed=17.0),
    # Training only, like dusk: a wet, misty late evening (rain on the road, lamps reflected, again
    # other windows lit) and a hazy dawn (low sun from the east, some lamps still on). Why: the
    # night queries were the weakest condition after dusk was added (37 % of labels right), and one
    # lamp-lit appearance teaches one set of lit windows; more evenings teach that windows vary.
    Condition("rain_night", 300, -15, (0.0, 0.0, 0.0), (0.035, 0.035, 0.05), (0.02, 0.02, 0.022),
              (0.015, 0.016, 0.025), (0.07, 0.065, 0.08), 1.0,
              ((0.10, 0.26, 0.06), (0.16, 0.32, 0.08)), (0.14, 0.30, 0.08),
              0.0, 0.1, False, 0.9, 0.9, 2.3, 7.0, 0.008, window_seed=41.0),
    Condition("dawn", 95, 6, (1.8, 1.2, 0.8), (0.3, 0.3, 0.4), (0.2, 0.17, 0.15),
              (0.3, 0.38, 0.6), (0.9, 0.65, 0.5), 0.25,
              ((0.12, 0.30, 0.07), (0.22, 0.38, 0.09)), (0.18, 0.35, 0.09),
              0.0, 0.0, False, 0.3, 0.3, 1.4, 3.0, 0.006, window_seed=5.0),
)}

DEFAULT_CONDITIONS: tuple[str, ...] = ("summer", "overcast", "autumn", "winter", "night")
