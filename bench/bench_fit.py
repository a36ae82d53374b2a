"""Speed of fit_chinchilla against plain scipy multi-start, on the Chinchilla runs.

Usage (from the repository root):
    .venv/bin/python bench/bench_fit.py CSV_PATH [--repeats 5] [--scipy-starts 200] [--bootstrap 1000]

Plain scipy is what Hoffmann et al.'s recipe costs when written directly: scipy.optimize.minimize
(L-BFGS-B, default tolerances, finite-difference gradients) from each of the 4,500 grid starts.  To
keep the benchmark short only a random subset of the starts is timed and the time is scaled
linearly to 4,500.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp
from validate_chinchilla import load_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.laws import HUBER_DELTA_CHINCHILLA, chinchilla_start_grid, fit_chinchilla


def plain_objective(N: np.ndarray, D: np.ndarray, loss: np.ndarray) -> Callable[[np.ndarray], float]:
    """Hoffmann et al.'s objective written directly with scipy.special, theta = (e, a, alpha, b, beta)."""
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)

    def objective(theta: np.ndarray) -> float:
        e, a, alpha, b, beta = theta
        log_pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
        return float(np.sum(huber(HUBER_DELTA_CHINCHILLA, log_pred - log_loss)))

    return objective


def time_plain_scipy(
    N: np.ndarray, D: np.ndarray, loss: np.ndarray, n_starts: int, seed: int
) -> tuple[float, float]:
    """(seconds for the sampled starts, best objective among them)."""
    grid = chinchilla_start_grid()
    starts = grid[np.random.default_rng(seed).choice(len(grid), n_starts, replace=False)]
    objective = plain_objective(N, D, loss)
    begin = time.perf_counter()
    best = min(minimize(objective, start, method="L-BFGS-B").fun for start in starts)
    return time.perf_counter() - begin, best


def median_fit_seconds(N: np.ndarray, D: np.ndarray, loss: np.ndarray, repeats: int) -> tuple[float, float]:
    """(median seconds of fit_chinchilla over ``repeats`` runs, its objective)."""
    seconds, objective = [], 0.0
    for _ in range(repeats):
        begin = time.perf_counter()
        objective = fit_chinchilla(N, D, loss).objective
        seconds.append(time.perf_counter() - begin)
    return statistics.median(seconds), objective


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv_path")
    parser.add_argument("--repeats", type=int, default=5, help="fast-fit repeats (median reported)")
    parser.add_argument("--scipy-starts", type=int, default=200, help="grid starts timed for plain scipy")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples timed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    N, D, loss = load_runs(args.csv_path)
    n_grid = len(chinchilla_start_grid())
    fast_seconds, fast_objective = median_fit_seconds(N, D, loss, args.repeats)

    begin = time.perf_counter()
    fit_chinchilla(N, D, loss, bootstrap=args.bootstrap, seed=args.seed)
    bootstrap_seconds = time.perf_counter() - begin

    subset_seconds, subset_best = time_plain_scipy(N, D, loss, args.scipy_starts, args.seed)
    plain_seconds = subset_seconds * n_grid / args.scipy_starts

    print(f"Chinchilla form on {len(loss)} runs, {n_grid:,} grid starts")
    print(f"{'method':<68} {'seconds':>9} {'ratio':>9}")
    rows = [
        (f"fit_chinchilla, all {n_grid:,} starts (median of {args.repeats})", fast_seconds),
        (
            f"plain scipy L-BFGS-B, {n_grid:,} starts "
            f"(timed {args.scipy_starts}, scaled x{n_grid / args.scipy_starts:.1f})",
            plain_seconds,
        ),
        (f"fit_chinchilla with a {args.bootstrap:,}-resample bootstrap", bootstrap_seconds),
    ]
    for label, seconds in rows:
        print(f"{label:<68} {seconds:>9.2f} {seconds / fast_seconds:>8.1f}x")
    print(f"plain scipy is {plain_seconds / fast_seconds:.0f}x slower than fit_chinchilla (estimated)")
    print(
        f"objective: fit_chinchilla {fast_objective:.10e}; "
        f"best of the {args.scipy_starts} plain scipy starts "
        f"{subset_best:.10e} (default tolerances stop early)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
