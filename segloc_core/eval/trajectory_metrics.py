"""Localization accuracy of an estimated trajectory against ground truth, and its reports.

Frame convention: a `Trajectory` holds body poses in the world, T_world_body (x_world = R x_body
+ t), e.g. T_map_base_link or T_world_cam: `t` is the body's position, as in TUM files and evo.
Camera poses kept as T_cam_world (kapture, COLMAP, `FrameRecord.T_cam_world`) are inverted on the
way in (`Trajectory.from_poses(..., inverse=True)`, `read_kapture_trajectory`).

Scoring follows the visual-localization benchmarks (SegLoc, PixLoc): every ground-truth frame
counts; a frame without an estimate (lost, rejected, dropped) is not localized and fails every
threshold. Recall at (metres, degrees) is the share of ground-truth frames whose estimate is
within both; medians are over localized frames only. The per-frame errors are those of evo's APE
without alignment (translation part and rotation angle of T_gt^-1 T_est), which the tests check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from segloc_core.errors import InputError
from segloc_core.geometry import Pose

DEFAULT_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass(frozen=True)
class Trajectory:
    """Stamped body poses T_world_body: stamps_ns (N,) int64 increasing, R (N,3,3), t (N,3) m."""

    stamps_ns: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        stamps = np.asarray(self.stamps_ns, dtype=np.int64).reshape(-1)
        R = np.asarray(self.R, dtype=np.float64).reshape(-1, 3, 3)
        t = np.asarray(self.t, dtype=np.float64).reshape(-1, 3)
        if not len(stamps) == len(R) == len(t):
            raise InputError(f"trajectory: {len(stamps)} stamps, {len(R)} rotations, "
                             f"{len(t)} translations")
        if np.any(np.diff(stamps) <= 0):
            order = np.argsort(stamps, kind="stable")
            stamps, R, t = stamps[order], R[order], t[order]
            if np.any(np.diff(stamps) == 0):
                raise InputError("trajectory has repeated timestamps")
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise InputError("trajectory holds NaN or infinite poses")
        object.__setattr__(self, "stamps_ns", stamps)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @classmethod
    def from_poses(cls, stamps_ns: Sequence[int] | np.ndarray, poses: Sequence[Pose],
                   inverse: bool = False) -> Trajectory:
        """From T_world_body poses, or from T_body_world ones (camera T_cam_world) with inverse."""
        poses = [p.inv() for p in poses] if inverse else list(poses)
        if not poses:
            return cls(np.zeros(0, np.int64), np.zeros((0, 3, 3)), np.zeros((0, 3)))
        return cls(np.asarray(stamps_ns, np.int64), np.stack([p.R for p in poses]),
                   np.stack([p.t for p in poses]))

    @classmethod
    def from_quat_xyzw(cls, stamps_ns: np.ndarray, t: np.ndarray, q_xyzw: np.ndarray) -> Trajectory:
        q = np.asarray(q_xyzw, dtype=np.float64).reshape(-1, 4)
        norms = np.linalg.norm(q, axis=1)
        if len(q) and (not np.all(np.isfinite(q)) or np.any(norms < 1e-9)):
            raise InputError("trajectory has zero or non-finite quaternions")
        R = Rotation.from_quat(q).as_matrix() if len(q) else np.zeros((0, 3, 3))
        return cls(stamps_ns, R, t)

    def pose(self, i: int) -> Pose:
        return Pose(self.R[i], self.t[i])

    def poses(self) -> list[Pose]:
        return [self.pose(i) for i in range(len(self))]

    def quat_xyzw(self) -> np.ndarray:
        return Rotation.from_matrix(self.R).as_quat() if len(self) else np.zeros((0, 4))

    def interpolate(self, stamps_ns: np.ndarray, max_gap_ns: int) -> tuple[np.ndarray, Trajectory]:
        """Poses at `stamps_ns` (linear translation, slerp rotation) and the mask of those stamps
        that lie inside the trajectory between two samples at most `max_gap_ns` apart."""
        stamps_ns = np.asarray(stamps_ns, np.int64)
        i = np.searchsorted(self.stamps_ns, stamps_ns)  # first sample >= stamp
        exact = (i < len(self)) & (self.stamps_ns[np.minimum(i, len(self) - 1)] == stamps_ns)
        inside = (i > 0) & (i < len(self))
        lo, hi = np.clip(i - 1, 0, len(self) - 1), np.clip(i, 0, len(self) - 1)
        gap = self.stamps_ns[hi] - self.stamps_ns[lo]
        valid = exact | (inside & (gap <= max_gap_ns))
        idx = np.nonzero(valid)[0]
        if not len(idx):
            return valid, Trajectory(np.zeros(0, np.int64), np.zeros((0, 3, 3)), np.zeros((0, 3)))
        lo, hi = np.where(exact[idx], hi[idx], lo[idx]), hi[idx]
        span = (self.stamps_ns[hi] - self.stamps_ns[lo]).astype(np.float64)
        alpha = np.divide((stamps_ns[idx] - self.stamps_ns[lo]).astype(np.float64), span,
                          out=np.zeros(len(idx)), where=span > 0)
        t = (1 - alpha)[:, None] * self.t[lo] + alpha[:, None] * self.t[hi]
        # slerp per segment: R_lo exp(alpha log(R_lo^T R_hi))
        delta = Rotation.from_matrix(np.einsum("nji,njk->nik", self.R[lo], self.R[hi])).as_rotvec()
        R = self.R[lo] @ Rotation.from_rotvec(alpha[:, None] * delta).as_matrix()
        return valid, Trajectory(stamps_ns[idx], R, t)


# --- files ---------------------------------------------------------------------------------------

def _seconds_to_ns(text: str) -> int:
    """Exact decimal seconds -> ns (a float64 cannot hold ns since the epoch)."""
    if "e" in text.lower():
        return int(round(float(text) * 1e9))
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    return sign * (int(whole or "0") * 1_000_000_000 + int((frac + "000000000")[:9]))


def read_tum(path: str | Path) -> Trajectory:
    """A TUM trajectory file: `timestamp tx ty tz qx qy qz qw` per line, seconds, '#' comments."""
    path = Path(path)
    stamps, rows = [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read TUM trajectory {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 8:
            raise InputError(f"{path}:{number}: expected 8 values 'timestamp tx ty tz qx qy qz qw', "
                             f"got {len(fields)}")
        try:
            stamps.append(_seconds_to_ns(fields[0]))
            rows.append([float(v) for v in fields[1:]])
        except ValueError:
            raise InputError(f"{path}:{number}: not numbers: {line!r}") from None
    data = np.array(rows, dtype=np.float64).reshape(-1, 7)
    try:
        return Trajectory.from_quat_xyzw(np.array(stamps, np.int64), data[:, :3], data[:, 3:])
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def write_tum(path: str | Path, trajectory: Trajectory) -> Path:
    """TUM file that evo reads (`evo_ape tum gt.tum est.tum`); stamps with full ns precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    q = trajectory.quat_xyzw()
    lines = ["# timestamp tx ty tz qx qy qz qw  (T_world_body)"]
    for s, t, qi in zip(trajectory.stamps_ns, trajectory.t, q):
        sec, ns = divmod(int(s), 1_000_000_000)
        lines.append(f"{sec}.{ns:09d} " + " ".join(f"{v:.9f}" for v in (*t, *qi)))
    path.write_text("\n".join(lines) + "\n")
    return path


def read_kapture_trajectory(path: str | Path, device_id: str | None = None,
                            timestamp_unit_ns: int = 1) -> Trajectory:
    """kapture `trajectories.txt` (timestamp, device_id, qw, qx, qy, qz, tx, ty, tz; poses are
    world->device) as T_world_device. `device_id` picks one device when several are present;
    kapture timestamps are integers in a unit of the data set's choosing (`timestamp_unit_ns`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "sensors" / "trajectories.txt"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read kapture trajectory {path}: {exc}") from None
    stamps, rows, devices = [], [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 9:
            raise InputError(f"{path}:{number}: expected 'timestamp, device_id, qw, qx, qy, qz, "
                             f"tx, ty, tz', got {len(fields)} fields")
        devices.add(fields[1])
        if device_id is not None and fields[1] != device_id:
            continue
        try:
            stamps.append(int(fields[0]) * timestamp_unit_ns)
            qw, qx, qy, qz, tx, ty, tz = (float(v) for v in fields[2:9])
        except ValueError:
            raise InputError(f"{path}:{number}: not numbers: {line!r}") from None
        rows.append([tx, ty, tz, qx, qy, qz, qw])
    if device_id is None and len(devices) > 1:
        raise InputError(f"{path} has several devices {sorted(devices)}; choose one")
    data = np.array(rows, dtype=np.float64).reshape(-1, 7)
    try:
        T_device_world = Trajectory.from_quat_xyzw(np.array(stamps, np.int64), data[:, :3],
                                                   data[:, 3:])
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    R = np.transpose(T_device_world.R, (0, 2, 1))
    return Trajectory(T_device_world.stamps_ns, R, -np.einsum("nij,nj->ni", R, T_device_world.t))


# --- association and errors ----------------------------------------------------------------------

@dataclass(frozen=True)
class FrameErrors:
    """Per ground-truth frame: the matched estimate's errors, NaN where not localized."""

    stamps_ns: np.ndarray          # (N,) ground-truth stamps
    translation_m: np.ndarray      # (N,) |t_est - t_gt|
    rotation_deg: np.ndarray       # (N,) angle of R_gt^T R_est
    estimate_index: np.ndarray     # (N,) index into the estimate, -1 where not localized

    @property
    def localized(self) -> np.ndarray:
        return self.estimate_index >= 0


def associate(estimate: Trajectory, ground_truth: Trajectory, max_dt_ns: int = 0) -> np.ndarray:
    """For each ground-truth frame the index of the estimate nearest in time within `max_dt_ns`
    (0: exact stamps), or -1. Each estimate serves at most one frame (the nearest), as in evo."""
    match = np.full(len(ground_truth), -1, np.int64)
    if not len(estimate) or not len(ground_truth):
        return match
    j = np.searchsorted(estimate.stamps_ns, ground_truth.stamps_ns)
    before, after = np.clip(j - 1, 0, len(estimate) - 1), np.clip(j, 0, len(estimate) - 1)
    d_before = np.abs(ground_truth.stamps_ns - estimate.stamps_ns[before])
    d_after = np.abs(estimate.stamps_ns[after] - ground_truth.stamps_ns)
    nearest = np.where(d_after <= d_before, after, before)
    dt = np.minimum(d_before, d_after)
    ok = dt <= max_dt_ns
    # an estimate claimed by several frames stays with the closest one
    best: dict[int, int] = {}
    for i in np.nonzero(ok)[0]:
        k = int(nearest[i])
        if k not in best or dt[i] < dt[best[k]]:
            best[k] = int(i)
    for k, i in best.items():
        match[i] = k
    return match


def frame_errors(estimate: Trajectory, ground_truth: Trajectory, max_dt_ns: int = 0,
                 interpolate_gt: bool = False, max_gt_gap_ns: int = 1_000_000_000) -> FrameErrors:
    """Errors of each ground-truth frame's estimate. With `interpolate_gt`, the reference for an
    estimate is the ground truth interpolated at the estimate's own stamp (for estimates whose
    stamps differ from the ground truth's), across gaps of at most `max_gt_gap_ns`."""
    match = associate(estimate, ground_truth, max_dt_ns)
    trans = np.full(len(ground_truth), np.nan)
    rot = np.full(len(ground_truth), np.nan)
    frames = np.nonzero(match >= 0)[0]
    est_idx = match[frames]
    if interpolate_gt and len(frames):
        valid, ref = ground_truth.interpolate(estimate.stamps_ns[est_idx], max_gt_gap_ns)
        match[frames[~valid]] = -1
        frames, est_idx = frames[valid], est_idx[valid]
        R_ref, t_ref = ref.R, ref.t
    else:
        R_ref, t_ref = ground_truth.R[frames], ground_truth.t[frames]
    if len(frames):
        trans[frames] = np.linalg.norm(estimate.t[est_idx] - t_ref, axis=1)
        dR = np.einsum("nji,njk->nik", R_ref, estimate.R[est_idx])
        cos = np.clip((np.trace(dR, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
        rot[frames] = np.degrees(np.arccos(cos))
    return FrameErrors(ground_truth.stamps_ns.copy(), trans, rot, match)


# --- metrics -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalizationMetrics:
    """Scores over `num_frames` ground-truth frames (see module docstring)."""

    thresholds: tuple[tuple[float, float], ...]      # (metres, degrees)
    recall: tuple[float, ...]                        # share of all frames within each threshold
    median_translation_m: float                      # over localized frames; NaN if none
    median_rotation_deg: float
    localized_share: float
    num_frames: int
    num_localized: int
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    by_condition: dict[str, LocalizationMetrics] = field(default_factory=dict)

    def recall_at(self, metres: float, degrees: float) -> float:
        return self.recall[self.thresholds.index((metres, degrees))]

    def to_dict(self) -> dict:
        """JSON-ready: NaN as null, thresholds labelled."""
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        out = asdict(self)
        out["recall"] = {_threshold_label(m, d): r for (m, d), r in zip(self.thresholds, self.recall)}
        out["by_condition"] = {c: m.to_dict() for c, m in self.by_condition.items()}
        return clean(out)


def _threshold_label(metres: float, degrees: float) -> str:
    return f"{metres:g}m_{degrees:g}deg"


def metrics_from_errors(errors: FrameErrors,
                        thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS,
                        latency_ms: np.ndarray | None = None) -> LocalizationMetrics:
    thresholds = tuple((float(m), float(d)) for m, d in thresholds)
    n = len(errors.stamps_ns)
    loc = errors.localized
    t, r = errors.translation_m[loc], errors.rotation_deg[loc]
    recall = tuple(float(np.sum((t <= m) & (r <= d)) / n) if n else float("nan")
                   for m, d in thresholds)
    p50 = p95 = None
    if latency_ms is not None and len(latency_ms):
        p50, p95 = (float(v) for v in np.percentile(np.asarray(latency_ms, np.float64), [50, 95]))
    return LocalizationMetrics(
        thresholds, recall, float(np.median(t)) if len(t) else float("nan"),
        float(np.median(r)) if len(r) else float("nan"), float(loc.mean()) if n else float("nan"),
        n, int(loc.sum()), p50, p95)


def localization_metrics(estimate: Trajectory, ground_truth: Trajectory,
                         thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS, *,
                         max_dt_ns: int = 0, interpolate_gt: bool = False,
                         conditions: Sequence[str] | None = None,
                         latency_ns: Sequence[tuple[int, int]] | np.ndarray | None = None
                         ) -> LocalizationMetrics:
    """Recall at each (metres, degrees) threshold over all ground-truth frames, medians over the
    localized ones. `conditions` (one label per ground-truth frame) adds per-condition metrics;
    `latency_ns` (pairs of reference time, publish time) adds p50/p95 latency."""
    errors = frame_errors(estimate, ground_truth, max_dt_ns, interpolate_gt)
    latency_ms = None
    if latency_ns is not None and len(latency_ns):
        pairs = np.asarray(latency_ns, np.int64).reshape(-1, 2)
        latency_ms = (pairs[:, 1] - pairs[:, 0]) * 1e-6
    overall = metrics_from_errors(errors, thresholds, latency_ms)
    if conditions is None:
        return overall
    labels = np.asarray(conditions)
    if len(labels) != len(ground_truth):
        raise InputError(f"{len(labels)} condition labels for {len(ground_truth)} ground-truth "
                         "frames")
    by_condition = {}
    for label in dict.fromkeys(labels.tolist()):
        sel = labels == label
        part = FrameErrors(errors.stamps_ns[sel], errors.translation_m[sel],
                           errors.rotation_deg[sel], errors.estimate_index[sel])
        by_condition[str(label)] = metrics_from_errors(part, thresholds)
    return replace(overall, by_condition=by_condition)


# --- reports -------------------------------------------------------------------------------------

def write_json(path: str | Path, results: Mapping[str, LocalizationMetrics],
               extra: Mapping[str, object] | None = None) -> Path:
    """{"methods": {name: metrics}, **extra}, NaN written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**(extra or {}), "methods": {name: m.to_dict() for name, m in results.items()}}
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def _fmt(value: float | None, digits: int, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}{suffix}"


def markdown_table(results: Mapping[str, LocalizationMetrics], unit: str = "m") -> str:
    """One row per method (e.g. "PA (retrieval prior)", "PR (refined)"), then per condition;
    distances in `unit` ("units" for a map of unknown scale)."""
    if not results:
        return ""
    thresholds = next(iter(results.values())).thresholds
    head = (["method"] + [f"recall {m:g} {unit}, {d:g}°" for m, d in thresholds]
            + [f"median t ({unit})", "median R (°)", "localized", "frames", "latency p50 / p95 (ms)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def row(name: str, m: LocalizationMetrics) -> str:
        latency = (f"{_fmt(m.latency_p50_ms, 1)} / {_fmt(m.latency_p95_ms, 1)}"
                   if m.latency_p50_ms is not None else "-")
        cells = ([name] + [_fmt(r, 1, 100, "%") for r in m.recall]
                 + [_fmt(m.median_translation_m, 3), _fmt(m.median_rotation_deg, 2),
                    _fmt(m.localized_share, 1, 100, "%"), str(m.num_frames), latency])
        return "| " + " | ".join(cells) + " |"

    lines += [row(name, m) for name, m in results.items()]
    for name, m in results.items():
        lines += [row(f"{name} · {cond}", cm) for cond, cm in m.by_condition.items()]
    return "\n".join(lines) + "\n"


def plot_trajectory(path: str | Path, ground_truth: Trajectory, estimate: Trajectory,
                    errors: FrameErrors, title: str = "", max_error_m: float | None = None) -> Path:
    """Top view (x-y): ground truth as a line, each localized frame's estimate as a dot coloured
    by translation error, ground-truth frames without an estimate as grey crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    loc = errors.localized
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot(ground_truth.t[:, 0], ground_truth.t[:, 1], "-", color="0.3", lw=1.2,
            label="ground truth")
    if np.any(~loc):
        ax.plot(ground_truth.t[~loc, 0], ground_truth.t[~loc, 1], "x", color="0.6", ms=4,
                label=f"not localized ({int((~loc).sum())})")
    if np.any(loc):
        est = estimate.t[errors.estimate_index[loc]]
        err = errors.translation_m[loc]
        vmax = max_error_m or max(float(np.percentile(err, 95)), 1e-3)
        sc = ax.scatter(est[:, 0], est[:, 1], c=err, cmap="viridis", vmin=0.0, vmax=vmax, s=12,
                        label="estimate", zorder=3)
        fig.colorbar(sc, ax=ax, label="translation error (m)", extend="max")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title or "trajectory, top view")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_error_curve(path: str | Path, errors: Mapping[str, FrameErrors],
                     thresholds: Sequence[tuple[float, float]] = DEFAULT_THRESHOLDS) -> Path:
    """Cumulative share of all ground-truth frames (not localized ones never count) against the
    translation error, log scale, one curve per method, thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo = 1e-3
    for name, e in errors.items():
        err = np.sort(e.translation_m[e.localized])
        n = len(e.stamps_ns)
        share = np.arange(1, len(err) + 1) / max(n, 1)
        ax.step(np.concatenate([[lo], np.maximum(err, lo)]), np.concatenate([[0.0], share]),
                where="post", label=f"{name} ({100 * len(err) / max(n, 1):.0f}% localized)")
    for m, _ in thresholds:
        ax.axvline(m, color="0.7", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlim(lo, 100.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("translation error (m)")
    ax.set_ylabel("share of frames with smaller error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
