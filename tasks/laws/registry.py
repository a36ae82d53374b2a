"""One registry of the law forms: how each is fitted to runs (N, D, loss), how it predicts, what it
reports, and whether it has a bootstrap.  ``fit`` dispatches through it; so does the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from tasks.laws.compute import _six_n_d
from tasks.laws.forms import fit_chinchilla, fit_kaplan, fit_power_law
from tasks.laws.multiplicative import fit_multiplicative
from tasks.laws.predictors import _PREDICTORS
from tasks.laws.results import FitResult
from tasks.laws.validation import _validated_columns


class BootstrapUnavailable(ValueError):
    """A form without a bootstrap was asked for one."""


@dataclass(frozen=True)
class LawForm:
    """A law form: ``fit(N, D, loss, *, bootstrap=0, seed=0, **options)`` on one value per run,
    ``predict(params, N or x, D, C)``, and the names of the params it reports."""

    name: str
    fit: Callable[..., FitResult]
    predict: Callable[..., np.ndarray]
    params: tuple[str, ...]
    bootstrap: bool = True


def _fit_multiplicative_runs(
    N: ArrayLike, D: ArrayLike, loss: ArrayLike, *, compute: ArrayLike | None = None, **options: Any
) -> FitResult:
    compute_values = _six_n_d(N, D) if compute is None else compute
    return fit_multiplicative(N, D, compute_values, loss, **options)


def _law(name: str, fitter: Callable[..., FitResult], params: tuple[str, ...]) -> LawForm:
    return LawForm(name, fitter, _PREDICTORS[name], params)


_POWER_LAW_PARAMS = ("E", "A", "alpha")

FORMS: dict[str, LawForm] = {
    law.name: law
    for law in (
        _law("chinchilla", fit_chinchilla, ("E", "A", "B", "alpha", "beta", "a_opt", "b_opt")),
        _law("kaplan", fit_kaplan, ("N_c", "D_c", "alpha_N", "alpha_D")),
        _law(
            "power_law_N",
            lambda N, D, loss, **kw: fit_power_law(N, loss, axis="N", **kw),
            _POWER_LAW_PARAMS,
        ),
        _law(
            "power_law_D",
            lambda N, D, loss, **kw: fit_power_law(D, loss, axis="D", **kw),
            _POWER_LAW_PARAMS,
        ),
        _law(
            "power_law_C",
            lambda N, D, loss, *, compute=None, **kw: fit_power_law(
                _six_n_d(N, D) if compute is None else compute, loss, axis="C", **kw
            ),
            _POWER_LAW_PARAMS,
        ),
        _law("multiplicative", _fit_multiplicative_runs, ("a", "b", "c", "d")),
    )
}
"""Every form by name.  power_law_C and multiplicative take ``compute=`` (default C = 6 N D), one
value per run; multiplicative may come back as "multiplicative_reduced" (d nan) when C is a power of N D."""


def fit(form: str, N: ArrayLike, D: ArrayLike, loss: ArrayLike, **options: Any) -> FitResult:
    """Fit ``form`` (a key of FORMS) to runs with N parameters, D tokens and final loss; ``options``
    go to the form's fitter (every form takes ``bootstrap=`` and ``seed=``)."""
    if form not in FORMS:
        raise ValueError(f"Unknown form {form!r}; choose one of {', '.join(FORMS)}.")
    law = FORMS[form]
    # Every run's N, D and loss, also those a power-law form does not use: one run, one row of each.
    N, D, loss = _validated_columns(form, None, N=N, D=D, loss=loss)
    if options.get("bootstrap", 0) and not law.bootstrap:
        raise BootstrapUnavailable(f"The {form} form has no bootstrap; pass bootstrap=0.")
    return law.fit(N, D, loss, **options)
