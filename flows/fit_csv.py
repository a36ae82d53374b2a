"""`scalelaw fit --csv`: fit one law form to anyone's runs in a table file (CSV, TSV or Parquet).

The one-axis forms see what a sweep gives them (tasks.fits): the best run per N (per D), and the
loss-compute frontier for power_law_C; `--pool` fits every run instead.  Every user mistake is an
InputError of one sentence, which the CLI prints with exit status 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
from rich.console import Console

from flows.fit_output import PRINTERS, finite_or_none
from flows.runs_file import read_runs
from flows.spec import MAX_BOOTSTRAP
from tasks.errors import InputError

FORMS_HELP = {
    "chinchilla": "L = E + A/N^alpha + B/D^beta, Huber on log loss, Hoffmann et al.'s 4,500 starts",
    "kaplan": "L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
    "power_law_N": "L = E + A N^-alpha, best run per N (--pool: every run)",
    "power_law_D": "L = E + A D^-alpha, best run per D (--pool: every run)",
    "power_law_C": "L = E + A C^-alpha on the loss-compute frontier (--pool: every run)",
    "multiplicative": "L = a N^b D^c C^d, log-linear least squares",
    "isoflop": "Approach 2: a parabola in log N per compute budget; N_opt, D_opt against C",
}
ONE_AXIS = {"power_law_N": "N", "power_law_D": "D", "power_law_C": "C"}
HUBER_FORMS = {"chinchilla", "kaplan", *ONE_AXIS}
# Options of `scalelaw fit --store` that mean nothing for a file of runs: (dest, flag).
STORE_ONLY = (
    ("sweep", "--sweep"),
    ("params_kind", "--params-kind"),
    ("compute_kind", "--compute-kind"),
    ("target", "--target"),
)


def add_csv_options(fit: argparse.ArgumentParser) -> None:
    """The options of `scalelaw fit --csv`."""
    width = max(map(len, FORMS_HELP))
    listed = "\n".join(f"  {name:<{width}}  {text}" for name, text in FORMS_HELP.items())
    fit.epilog = f"forms (--form, with --csv):\n{listed}"
    fit.formatter_class = argparse.RawDescriptionHelpFormatter
    fit.add_argument(
        "--form", default="chinchilla", help="with --csv: the law form, listed below (default: chinchilla)"
    )
    fit.add_argument("--params-col", default="params", help="with --csv: column of N (default: params)")
    fit.add_argument("--tokens-col", default="tokens", help="with --csv: column of D (default: tokens)")
    fit.add_argument("--loss-col", default="loss", help="with --csv: column of the loss (default: loss)")
    fit.add_argument("--flops-col", help="with --csv: column of compute C; tokens are then C / (6 N)")
    fit.add_argument("--budget-col", help="with --form isoflop: column naming each run's compute budget")
    fit.add_argument(
        "--budget-rtol",
        type=float,
        default=0.05,
        help="with --form isoflop, no --budget-col: runs whose compute agrees within this share a budget",
    )
    fit.add_argument("--bootstrap", type=int, default=0, help="with --csv: resamples for the intervals")
    fit.add_argument("--pool", action="store_true", help="with --csv: one-axis forms fit every run")
    fit.add_argument(
        "--loss",
        dest="objective",
        default=None,
        metavar="huber[:DELTA]|mse",
        help="with --csv: the objective on log loss, Huber or squared error "
        "(default: huber:1e-3 for chinchilla, mse for the others)",
    )
    fit.add_argument("--tie-exponents", action="store_true", help="with --form chinchilla: alpha = beta")
    fit.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --csv: hold a parameter, e.g. E=1.69",
    )
    fit.add_argument(
        "--optimal",
        metavar="C1,C2,...",
        help="with --form chinchilla or isoflop: compute-optimal N, D at these FLOPs",
    )


def refuse_csv_options(args: argparse.Namespace) -> None:
    """`scalelaw fit --store` with an option of --csv: one sentence, not a silently ignored option."""
    probe = argparse.ArgumentParser()
    add_csv_options(probe)
    defaults = vars(probe.parse_args([]))
    given = [
        "--" + dest.replace("_", "-") if dest != "objective" else "--loss"
        for dest in CSV_ONLY
        if getattr(args, dest) != defaults[dest]
    ]
    if given:
        raise InputError(
            f"{', '.join(given)}: {'apply' if len(given) > 1 else 'applies'} to --csv only (a stored sweep "
            "fits every form with its own settings); drop it or pass --csv FILE."
        )


CSV_ONLY = (
    "form",
    "params_col",
    "tokens_col",
    "loss_col",
    "flops_col",
    "budget_col",
    "budget_rtol",
    "bootstrap",
    "pool",
    "objective",
    "tie_exponents",
    "fix",
    "optimal",
)


def fit_csv(args: argparse.Namespace, console: Console) -> int:
    """Fit ``args.form`` to the runs in ``args.csv`` and print it; InputError for any mistake."""
    from tasks import laws

    _refuse_store_options(args)
    if args.form not in FORMS_HELP:
        raise InputError(f"--form: unknown form {args.form!r}; choose one of {', '.join(FORMS_HELP)}.")
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise InputError(
            f"--bootstrap: {args.bootstrap} is not between 0 and {MAX_BOOTSTRAP:,}; pass one that is."
        )
    options = _fit_options(args)
    optimal = None if args.optimal is None else _compute_budgets(args.optimal, args.form)
    runs = read_runs(args)
    budgets = runs.pop("budget", None)
    try:
        if args.form == "isoflop":
            result = laws.isoflop_optima(
                runs["N"], runs["D"], runs["loss"], compute=runs["C"], budgets=budgets, rtol=args.budget_rtol
            )
        else:
            result = _fit_form(args.form, runs, args.pool, options)
        optimum = None if optimal is None else _optimal_rows(result, optimal)
    except ValueError as error:
        raise InputError(f"fit: {error}") from None
    PRINTERS[args.format](result, optimum, console)
    return 0


def _refuse_store_options(args: argparse.Namespace) -> None:
    given = [flag for dest, flag in STORE_ONLY if getattr(args, dest, None) is not None]
    if given:
        raise InputError(
            f"{', '.join(given)}: {'apply' if len(given) > 1 else 'applies'} to --store only (a file of runs "
            "has its own N, D and loss columns); drop it and name the columns with --params-col, "
            "--tokens-col, --flops-col and --loss-col."
        )


def _fit_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword options of the form's fitter from --loss, --fix, --tie-exponents and --bootstrap."""
    options: dict[str, Any] = {}
    form = args.form
    if args.bootstrap and form == "isoflop":
        raise InputError(
            "--bootstrap: the isoflop form's intervals are from each parabola's fit; drop --bootstrap."
        )
    if args.bootstrap:
        options["bootstrap"] = args.bootstrap
    if args.objective is not None:
        if form not in HUBER_FORMS:
            raise InputError(f"--loss: the {form} form is fitted by least squares only; drop --loss.")
        options["huber_delta"] = _huber_delta(args.objective)
    if args.fix:
        if form not in HUBER_FORMS:
            raise InputError(f"--fix: the {form} form has no parameters to hold fixed; drop --fix.")
        options["fixed"] = dict(_fixed_parameter(text) for text in args.fix)
    if args.tie_exponents:
        if form != "chinchilla":
            raise InputError("--tie-exponents: only the chinchilla form has two exponents to tie; drop it.")
        options["tie_exponents"] = True
    return options


def _huber_delta(text: str) -> float:
    name, _, value = text.partition(":")
    if name == "mse" and not value:
        return math.inf
    if name == "huber":
        from tasks.laws import HUBER_DELTA_CHINCHILLA

        if not value:
            return HUBER_DELTA_CHINCHILLA
        try:
            delta = float(value)
        except ValueError:
            delta = math.nan
        if delta > 0 and math.isfinite(delta):
            return delta
    raise InputError(
        f"--loss: {text!r} is not huber, huber:DELTA with DELTA > 0, or mse; pass e.g. huber:1e-3."
    )


def _fixed_parameter(text: str) -> tuple[str, float]:
    name, equals, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not equals or not name or not math.isfinite(number):
        raise InputError(f"--fix: {text!r} is not NAME=VALUE with a finite number; pass e.g. --fix E=1.69.")
    return name.strip(), number


def _compute_budgets(text: str, form: str) -> np.ndarray:
    if form not in ("chinchilla", "isoflop"):
        raise InputError(
            f"--optimal: the {form} form has no compute-optimal allocation; use --form chinchilla or isoflop."
        )
    try:
        budgets = np.array([float(part) for part in text.split(",")])
    except ValueError:
        budgets = np.array([math.nan])
    if not (np.all(np.isfinite(budgets)) and np.all(budgets > 0)):
        raise InputError(f"--optimal: {text!r} is not a list of positive FLOP counts; pass e.g. 1e21,1e23.")
    return budgets


def _fit_form(form: str, runs: dict[str, np.ndarray], pool: bool, options: dict[str, Any]) -> Any:
    from dataclasses import replace

    from tasks import laws
    from tasks.fits import best_per, compute_frontier

    N, D, C, loss = runs["N"], runs["D"], runs["C"], runs["loss"]
    if form == "multiplicative":
        return laws.fit_multiplicative(N, D, C, loss, **options)
    if form not in ONE_AXIS:
        fitter = laws.fit_chinchilla if form == "chinchilla" else laws.fit_kaplan
        return fitter(N, D, loss, **options)
    axis = ONE_AXIS[form]
    x = runs[axis]
    _check_runs(N, D, loss)  # before selecting, so that a NaN loss is named rather than lost by the selection
    if pool:
        chosen, how = np.arange(len(x)), f"Fitted to all {len(x)} runs (--pool)."
    elif axis == "C":
        chosen = compute_frontier(x, loss)
        how = (
            f"Fitted to the {len(chosen)} runs of the {len(x)} on the loss-compute frontier (each beats "
            "every run of smaller compute), as a sweep does; --pool fits every run."
        )
    else:
        chosen = best_per(x, loss)
        how = (
            f"Fitted to the best run of each of the {len(chosen)} distinct {axis} values ({len(x)} runs), "
            "as a sweep does; --pool fits every run."
        )
    result = laws.fit_power_law(x[chosen], loss[chosen], axis=axis, **options)
    return replace(result, note=f"{how} {result.note}")


def _check_runs(N: np.ndarray, D: np.ndarray, loss: np.ndarray) -> None:
    from tasks.laws.validation import _validated_columns

    _validated_columns("runs", None, N=N, D=D, loss=loss)


def _optimal_rows(result: Any, budgets: np.ndarray) -> list[dict[str, float | None]]:
    """The compute-optimal table: N_opt (with its 95% band where there is one), D_opt, D/N, loss."""
    from tasks import laws

    if isinstance(result, laws.IsoFlopResult):
        if not math.isfinite(result.a):
            raise ValueError(f"--optimal needs the fitted N_opt ∝ C^a, which is unavailable: {result.note}")
        n_opt = result.coefficient * budgets**result.a
        d_opt = budgets / (laws.FLOPS_PER_PARAM_TOKEN * n_opt)
        low = high = loss = np.full(len(budgets), math.nan)
    else:
        optimum = laws.compute_optimal(result, budgets)
        n_opt, d_opt, loss = optimum.N_opt, optimum.D_opt, optimum.loss
        low, high = optimum.N_opt_ci or (np.full(len(budgets), math.nan),) * 2
    return [
        {
            "flops": float(c),
            "N_opt": finite_or_none(n),
            "N_opt_low": finite_or_none(lo),
            "N_opt_high": finite_or_none(hi),
            "D_opt": finite_or_none(d),
            "tokens_per_param": finite_or_none(d / n),
            "loss": finite_or_none(value),
        }
        for c, n, lo, hi, d, value in zip(budgets, n_opt, low, high, d_opt, loss, strict=True)
    ]
