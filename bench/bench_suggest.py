"""Simulation harness for `scalelaw suggest`: does the suggested design narrow the N_opt interval at a
target compute more than extending the grid, at equal FLOPs?

Cells are drawn from a known Chinchilla law (the default sweep's fit, at its small scale) with
multiplicative log-normal noise; a 3 x 3 product grid starts each seed. Three strategies then spend
the same budget, the cost of the grid's natural extension (its next, larger row of N at the grid's D
values, 6ND each):

- suggested: tasks.laws.design_cells over a ladder of N x D candidates (the method of `scalelaw suggest`);
- grid: that next row of N;
- random: candidates of the same ladder drawn at random while the budget allows.

Each refit (Huber 1e-2 on log loss, a bootstrap) gives the 95% interval of N_opt at the target compute
(100x the grid's largest cell): its width in decades, log10(high / low), and the error of N_opt against
the true law's, |log10(N_opt / N_opt_true)|; medians over the seeds are printed as a table.

    python bench/bench_suggest.py [--seeds 10] [--bootstrap 200] [--noise 0.007] [--cells 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tasks.laws import compute_optimal, design_cells, fit_chinchilla, target_interval
from tasks.laws.results import FitResult

TRUE_LAW = {"E": 2.566, "A": 76.18, "alpha": 0.464, "B": 6366.0, "beta": 0.682}
GRID_N = np.array([8e3, 2.5e4, 8e4])
GRID_D = np.array([2e5, 6e5, 1.8e6])
LADDER_N = np.geomspace(5e3, 8e5, 12)
LADDER_D = np.geomspace(1e5, 5e6, 12)
HUBER_DELTA = 1e-2


def true_loss(N: np.ndarray, D: np.ndarray) -> np.ndarray:
    p = TRUE_LAW
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def true_n_opt(compute: float) -> float:
    p = TRUE_LAW
    law = FitResult("chinchilla", dict(p), {}, {}, {}, 0.0, 0, True, np.array([]), "")
    return float(compute_optimal(law, [compute]).N_opt[0])


def observe(N: np.ndarray, D: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return true_loss(N, D) * np.exp(rng.normal(0.0, noise, len(N)))


def cost(N: np.ndarray, D: np.ndarray) -> np.ndarray:
    return 6.0 * N * D


def candidates(N: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ladder's cells that are not in the grid already."""
    cand_n, cand_d = (a.ravel() for a in np.meshgrid(LADDER_N, LADDER_D))
    taken = np.array(
        [
            np.any(np.isclose(n, N, rtol=0.05) & np.isclose(d, D, rtol=0.05))
            for n, d in zip(cand_n, cand_d, strict=True)
        ]
    )
    return cand_n[~taken], cand_d[~taken]


def grid_extension() -> tuple[np.ndarray, np.ndarray]:
    step = GRID_N[1] / GRID_N[0]
    return np.full(len(GRID_D), GRID_N[-1] * step), GRID_D.copy()


def suggested(fit: FitResult, N, D, budget, compute, cells, rng) -> tuple[np.ndarray, np.ndarray]:
    cand_n, cand_d = candidates(N, D)
    costs = cost(cand_n, cand_d)
    design = design_cells(
        fit,
        N,
        D,
        cand_n,
        cand_d,
        compute=compute,
        budget=budget,
        max_cells=cells,
        set_cost=lambda chosen: float(costs[list(chosen)].sum()),
    )
    chosen = list(design.chosen)
    return cand_n[chosen], cand_d[chosen]


def random_cells(fit, N, D, budget, compute, cells, rng) -> tuple[np.ndarray, np.ndarray]:
    cand_n, cand_d = candidates(N, D)
    picked, spent = [], 0.0
    for i in rng.permutation(len(cand_n)):
        c = cost(cand_n[i], cand_d[i])
        if spent + c <= budget:
            picked.append(i)
            spent += c
    return cand_n[picked], cand_d[picked]


def grid_cells(fit, N, D, budget, compute, cells, rng) -> tuple[np.ndarray, np.ndarray]:
    return grid_extension()


STRATEGIES = {"suggested": suggested, "grid": grid_cells, "random": random_cells}


def interval(N, D, loss, bootstrap, seed, compute) -> tuple[FitResult, float, float]:
    """The refit, the N_opt interval's width in decades and N_opt's error in decades."""
    fit = fit_chinchilla(N, D, loss, huber_delta=HUBER_DELTA, bootstrap=bootstrap, seed=seed)
    estimate, low, high = target_interval(fit, compute)
    return fit, float(np.log10(high / low)), abs(float(np.log10(estimate / true_n_opt(compute))))


def run(seeds: int, bootstrap: int, noise: float, cells: int) -> dict[str, np.ndarray]:
    N, D = (a.ravel() for a in np.meshgrid(GRID_N, GRID_D))
    compute = 100 * float(cost(N, D).max())
    budget = float(cost(*grid_extension()).sum())
    results: dict[str, list[tuple[float, float, float]]] = {"start": [], **{name: [] for name in STRATEGIES}}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        loss = observe(N, D, noise, rng)
        fit, width, error = interval(N, D, loss, bootstrap, seed, compute)
        results["start"].append((width, error, 0.0))
        for name, strategy in STRATEGIES.items():
            new_n, new_d = strategy(fit, N, D, budget, compute, cells, np.random.default_rng(1000 + seed))
            new_loss = observe(new_n, new_d, noise, np.random.default_rng(2000 + seed))
            _, width, error = interval(
                np.r_[N, new_n], np.r_[D, new_d], np.r_[loss, new_loss], bootstrap, seed, compute
            )
            results[name].append((width, error, float(cost(new_n, new_d).sum()) / budget))
    return {name: np.array(rows) for name, rows in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.007, help="sd of the multiplicative log noise")
    parser.add_argument("--cells", type=int, default=16, help="cells the suggestion may add")
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args.seeds, args.bootstrap, args.noise, args.cells)
    N, D = (a.ravel() for a in np.meshgrid(GRID_N, GRID_D))
    compute = 100 * float(cost(N, D).max())
    print(
        f"target C = {compute:.3g} FLOPs, true N_opt = {true_n_opt(compute):.4g}; noise {args.noise:.2%}; "
        f"{args.seeds} seeds, bootstrap {args.bootstrap}; budget = the grid's next row of N"
    )
    print(
        "| strategy | width, median (decades) | width, mean | abs error, median (decades) | abs error, mean "
        "| FLOPs / budget |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        width, error, spent = rows.T
        print(
            f"| {name} | {np.median(width):.3f} | {np.mean(width):.3f} | {np.median(error):.3f} | "
            f"{np.mean(error):.3f} | {np.mean(spent):.2f} |"
        )
    grid, ours = np.median(results["grid"][:, 0]), np.median(results["suggested"][:, 0])
    print(
        f"suggested / grid interval width (medians): {ours / grid:.2f}; {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
