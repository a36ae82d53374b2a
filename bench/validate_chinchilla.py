"""Validate fit_chinchilla on Epoch AI's extraction of the Chinchilla runs (Besiroglu et al. 2024).

Usage (from the repository root):
    .venv/bin/python bench/validate_chinchilla.py CSV_PATH [--bootstrap 1000]

Drops the 5 highest-loss runs (240 remain), fits L = E + A/N^alpha + B/D^beta exactly as Hoffmann
et al. (2022) did, through both solvers (the 4,500-start multistart and variable projection, vpnls),
checks the global optimum of their summed Huber objective and that both reach it, and prints both
times; exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.laws import FitResult, chinchilla_objective, fit_chinchilla
from tasks.laws.vpnls import SOLVERS

DROPPED_HIGHEST_LOSS = 5
FIT_TIME_BUDGET_S = 2.0
SOLVER_AGREEMENT = 1e-9  # relative difference of the two solvers' objectives

# Global optimum of the summed Huber objective on the 240 runs: (value, tolerance, relative?).
EXPECTED = {
    "objective": (1.0183e-3, 1e-4, True),
    "E": (1.817, 0.002, False),
    "alpha": (0.347, 0.001, False),
    "beta": (0.367, 0.001, False),
    "A": (478.0, 0.01, True),
    "B": (2143.0, 0.01, True),
}
HOFFMANN_PRINTED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
HOFFMANN_MIN_OBJECTIVE_RATIO = 1.05  # "clearly higher" objective at the printed values
BESIROGLU_CI = {"E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}
CI_ENDPOINT_TOLERANCE = 0.3  # bootstrap endpoints within this fraction of Besiroglu's interval width


def load_runs(csv_path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) of the runs minus the highest-loss ones; D = C / (6 N)."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    n_params = np.array([float(row["Model Size"]) for row in rows])
    compute_flop = np.array([float(row["Training FLOP"]) for row in rows])
    loss = np.array([float(row["loss"]) for row in rows])
    keep = np.sort(np.argsort(loss)[:-DROPPED_HIGHEST_LOSS])
    return n_params[keep], compute_flop[keep] / (6.0 * n_params[keep]), loss[keep]


def objective_at(params: dict[str, float], N: np.ndarray, D: np.ndarray, loss: np.ndarray) -> float:
    theta = np.array(
        [np.log(params["E"]), np.log(params["A"]), params["alpha"], np.log(params["B"]), params["beta"]]
    )
    return chinchilla_objective(N, D, loss)(theta)[0]


def check_value(name: str, value: float, expected: float, tolerance: float, relative: bool) -> str | None:
    error = abs(value - expected) / abs(expected) if relative else abs(value - expected)
    kind = "relative" if relative else "absolute"
    status = "ok" if error <= tolerance else "FAIL"
    print(
        f"  {name:<10} {value:<14.6g} expected {expected:<10.6g} "
        f"{kind} error {error:.2e} (tol {tolerance:g}) {status}"
    )
    return None if status == "ok" else f"{name} = {value:.6g}, expected {expected:.6g}"


def check_fit(result: FitResult, hoffmann_objective: float) -> list[str]:
    values = {"objective": result.objective, **result.params}
    failures = [
        check_value(name, values[name], expected, tolerance, relative)
        for name, (expected, tolerance, relative) in EXPECTED.items()
    ]
    ratio = hoffmann_objective / result.objective
    print(
        f"  Hoffmann's printed values: objective {hoffmann_objective:.6g}, {ratio:.3f}x the optimum", end=" "
    )
    print("ok" if ratio >= HOFFMANN_MIN_OBJECTIVE_RATIO else "FAIL")
    if ratio < HOFFMANN_MIN_OBJECTIVE_RATIO:
        failures.append(f"Hoffmann's printed values are not clearly worse (ratio {ratio:.3f})")
    if not result.converged:
        failures.append("the fit did not converge")
    return [failure for failure in failures if failure]


def check_bootstrap(result: FitResult) -> list[str]:
    failures = []
    for name, (reference_low, reference_high) in BESIROGLU_CI.items():
        low, high = result.ci_low[name], result.ci_high[name]
        tolerance = CI_ENDPOINT_TOLERANCE * (reference_high - reference_low)
        ok = abs(low - reference_low) <= tolerance and abs(high - reference_high) <= tolerance
        print(
            f"  {name:<6} 95% CI [{low:.4f}, {high:.4f}]  "
            f"Besiroglu et al. [{reference_low}, {reference_high}]",
            end=" ",
        )
        print("ok" if ok else "FAIL")
        if not ok:
            failures.append(f"bootstrap CI of {name} [{low:.4f}, {high:.4f}] far from Besiroglu et al.'s")
    a_low, a_high = result.ci_low["a_opt"], result.ci_high["a_opt"]
    print(f"  a = beta/(alpha+beta) = {result.params['a_opt']:.4f}, 95% CI [{a_low:.4f}, {a_high:.4f}]")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv_path", help="chinchilla_epoch_svg_extracted.csv")
    parser.add_argument("--bootstrap", type=int, default=0, help="resamples for percentile CIs (e.g. 1000)")
    args = parser.parse_args()

    N, D, loss = load_runs(args.csv_path)
    failures, results = [], {}
    hoffmann_objective = objective_at(HOFFMANN_PRINTED, N, D, loss)
    for solver in SOLVERS:
        fit_chinchilla(N[:40], D[:40], loss[:40], solver=solver)  # warm up imports and caches
        start = time.perf_counter()
        result = results[solver] = fit_chinchilla(N, D, loss, solver=solver)
        fit_seconds = time.perf_counter() - start
        print(
            f"Chinchilla fit ({solver}) on {result.n_points} runs in {fit_seconds:.3f} s "
            f"(budget {FIT_TIME_BUDGET_S:g} s)"
        )
        for name, value in result.params.items():
            low, high = result.ci_low[name], result.ci_high[name]
            print(f"  {name:<6} {value:<12.6g} 95% CI [{low:.6g}, {high:.6g}]")
        print(f"  objective {result.objective:.10e}  converged {result.converged}")
        print(f"  note: {result.note}")
        print("Checks:")
        failures += [f"{solver}: {failure}" for failure in check_fit(result, hoffmann_objective)]
        if fit_seconds > FIT_TIME_BUDGET_S:
            print(
                f"  warning: fit took {fit_seconds:.2f} s, "
                f"over the {FIT_TIME_BUDGET_S:g} s budget (machine load?)"
            )
    gap = abs(results["vpnls"].objective - results["multistart"].objective) / results["multistart"].objective
    print(f"Solvers agree: objectives differ by {gap:.1e} relative (tol {SOLVER_AGREEMENT:g})")
    if gap > SOLVER_AGREEMENT:
        failures.append(f"vpnls and multistart objectives differ by {gap:.1e} relative")
    result = results["multistart"]

    if args.bootstrap > 0:
        start = time.perf_counter()
        bootstrapped = fit_chinchilla(N, D, loss, bootstrap=args.bootstrap, seed=0)
        print(f"Bootstrap: {args.bootstrap} resamples in {time.perf_counter() - start:.1f} s")
        failures += check_bootstrap(bootstrapped)
        print("  standard errors, sandwich (delta method) / bootstrap:")
        for name in ("E", "A", "B", "alpha", "beta", "a_opt"):
            sandwich, resampled = result.stderr[name], bootstrapped.stderr[name]
            print(f"    {name:<6} {sandwich:<10.4g} / {resampled:<10.4g} = {sandwich / resampled:.2f}")

    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
