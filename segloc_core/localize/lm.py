"""Levenberg-Marquardt on SE(3) with a left update, shared by every pose-refiner variant.

As in pixloc's optimizers, one loop (`run_lm`) serves all variants: a variant only supplies an
`Objective` whose `linearize(T)` returns the robust cost and its Gauss-Newton normal equations at T.
The loop owns damping, step acceptance and stopping, so variants cannot drift apart in those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.linalg.lapack import dposv

from segloc_core.geometry import Pose


@dataclass(frozen=True)
class Linearization:
    """Normal equations at a pose, for the left-update twist xi = [rho (m), omega (rad)].

    cost: robust cost E (sum over the valid points); point_costs (N,): each point's share, NaN
    where it is not valid (LM compares two poses on the points valid at both, so that a step can
    neither gain nor lose by moving points out of or into view); H: (6,6) Gauss-Newton Hessian of
    E; g: (6,) gradient of E; num_valid: points that contributed; sigma2: weighted mean squared
    residual per valid point; metric: (6,6) M such that sqrt(xi^T M xi) is the size of a step in
    the objective's own unit (for image alignment: the RMS displacement of the points in pixels),
    used to stop; extra_cost: a part of `cost` that belongs to no point (a pose prior), which step
    acceptance adds to the per-point comparison.
    """

    cost: float
    point_costs: np.ndarray
    H: np.ndarray
    g: np.ndarray
    num_valid: int
    sigma2: float
    metric: np.ndarray
    extra_cost: float = 0.0


class Objective(Protocol):
    def linearize_many(self, Ts: Sequence[Pose]) -> list[Linearization]: ...


@dataclass(frozen=True)
class LMConfig:
    """Damping and stopping rules.

    damping "marquardt" scales the damping by diag(H) (scale-free per parameter), "levenberg" by the
    identity. per_param_damping (6,) multiplies that diagonal per twist component (as pixloc's
    learned damping); None means all ones. A level stops when a step moves less than step_tol in
    the objective's metric (pixels at that level for the refiner: a coarse level stops at a coarser
    absolute precision) or decreases the cost by less than cost_rtol.
    """

    max_iterations: int = 25
    lambda_init: float = 1e-3
    lambda_up: float = 10.0
    lambda_down: float = 0.1
    lambda_max: float = 1e4
    lambda_min: float = 1e-6
    damping: str = "marquardt"
    per_param_damping: tuple[float, ...] | None = None
    step_tol: float = 0.1
    cost_rtol: float = 1e-3
    min_points: int = 12


@dataclass(frozen=True)
class LMTrace:
    """Outcome of one LM run. status: "converged", "max_iterations" or "too_few_points"."""

    T: Pose
    costs: np.ndarray
    lin: Linearization
    iterations: int
    status: str


def _damped_step(lin: Linearization, lam: float, cfg: LMConfig) -> np.ndarray | None:
    """Solve (H + lam D) step = -g by Cholesky (LAPACK dposv: little overhead for a 6x6 system)."""
    diag = np.diag(lin.H).copy() if cfg.damping == "marquardt" else np.ones(6)
    if cfg.damping == "marquardt":
        np.maximum(diag, 1e-9 * max(float(diag.max()), 1e-12), out=diag)
    if cfg.per_param_damping is not None:
        diag *= np.asarray(cfg.per_param_damping, dtype=np.float64)
    A = lin.H + np.diag(lam * diag)
    _, step, info = dposv(A, -lin.g)
    if info != 0 or not np.all(np.isfinite(step)):
        return None
    return step


def run_lm(objective: Objective, T_init: Pose, cfg: LMConfig) -> LMTrace:
    """Minimize objective.linearize(T).cost over T <- exp(xi) @ T, accepting only cost decreases."""
    return run_lm_many(objective, [T_init], cfg)[0]


@dataclass
class _Run:
    T: Pose
    lin: Linearization
    costs: list
    lam: float
    iterations: int = 0
    status: str | None = None


def run_lm_many(objective: Objective, T_inits: Sequence[Pose], cfg: LMConfig) -> list[LMTrace]:
    """`run_lm` from several starts in lockstep: each keeps its own damping and stops on its own,
    while every iteration linearizes all running starts in one `linearize_many` call."""
    if cfg.damping not in ("marquardt", "levenberg"):
        raise ValueError(f"damping must be 'marquardt' or 'levenberg', got {cfg.damping!r}")
    runs = [_Run(T, lin, [lin.cost], cfg.lambda_init)
            for T, lin in zip(T_inits, objective.linearize_many(T_inits))]
    for it in range(1, cfg.max_iterations + 1):
        trials = []  # (run, step, T_new)
        for run in runs:
            if run.status is not None:
                continue
            run.iterations = it
            if run.lin.num_valid < cfg.min_points:
                run.status, run.iterations = "too_few_points", it - 1
                continue
            step = _damped_step(run.lin, run.lam, cfg)
            if step is None:  # singular system: nothing constrains the pose at this damping
                run.lam *= cfg.lambda_up
                if run.lam > cfg.lambda_max:
                    run.status = "converged"
                continue
            trials.append((run, step, Pose.exp(step) @ run.T))
        if not trials:
            if all(run.status is not None for run in runs):
                break
            continue
        for (run, step, T_new), lin_new in zip(trials, objective.linearize_many(
                [T for _, _, T in trials])):
            lin = run.lin
            both = np.isfinite(lin.point_costs) & np.isfinite(lin_new.point_costs)
            before = float(lin.point_costs[both].sum()) + lin.extra_cost
            after = float(lin_new.point_costs[both].sum()) + lin_new.extra_cost
            small = float(step @ lin.metric @ step) < cfg.step_tol**2
            if after < before and lin_new.num_valid >= cfg.min_points:
                run.T, run.lin = T_new, lin_new
                run.costs.append(lin_new.cost)
                run.lam = max(run.lam * cfg.lambda_down, cfg.lambda_min)
                if small or (before - after) < cfg.cost_rtol * before:
                    run.status = "converged"
            else:
                run.lam *= cfg.lambda_up
                # a tiny step that does not help, or no damped step that helps: a local minimum
                if small or run.lam > cfg.lambda_max:
                    run.status = "converged"
    return [LMTrace(run.T, np.array(run.costs), run.lin, run.iterations,
                    run.status or "max_iterations") for run in runs]
