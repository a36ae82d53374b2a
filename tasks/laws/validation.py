"""Input checks shared by the fitters: float arrays of one value per run, finite and positive, enough of
them for the form's parameters, enough distinct values on each axis to identify them.  Each failure is a
ValueError of one sentence naming the input and the fix; runs that are valid but cannot identify a form
raise its subclass UnidentifiableError."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


class UnidentifiableError(ValueError):
    """The runs are valid but cannot determine the form's parameters (e.g. only two distinct D values
    for B and beta): the data's limit, not a caller's typo.  A ValueError, so that a sweep records the
    form as not fitted with this reason."""


def _validated_columns(form: str, n_params: int | None, **columns: ArrayLike) -> list[np.ndarray]:
    """Float arrays of equal length, finite and positive; at least n_params + 1 values when fitting
    a form with n_params parameters (None: at least one)."""
    arrays = {name: np.atleast_1d(np.asarray(values, dtype=float)) for name, values in columns.items()}
    _check_one_dimensional(arrays)
    _check_equal_lengths(arrays)
    for name, values in arrays.items():
        _check_finite_positive(name, values)
    n_points = len(next(iter(arrays.values())))
    if n_params is not None:
        _check_enough_points(form, n_params, n_points)
    elif n_points == 0:
        raise ValueError(f"{form} got empty inputs ({', '.join(arrays)}); pass at least one value.")
    return list(arrays.values())


def _check_one_dimensional(arrays: dict[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        if values.ndim != 1:
            raise ValueError(
                f"{name} must be one-dimensional (got shape {values.shape}); pass one value per run."
            )


def _check_equal_lengths(arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"Inputs have mismatched lengths ({listed}); pass one value per run in every array.")


def _check_finite_positive(name: str, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"{name} contains NaN or infinite values (first at index {bad[0]}); drop or fix those runs."
        )
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        raise ValueError(
            f"{name} must be positive but has {values[bad[0]]:g} at index {bad[0]}; drop or fix those runs."
        )


def _check_enough_points(form: str, n_params: int, n_points: int) -> None:
    if n_points < n_params + 1:
        raise ValueError(
            f"The {form} form has {n_params} parameters and needs at least {n_params + 1} runs, "
            f"got {n_points}; add runs or fit a form with fewer parameters."
        )


def _check_bootstrap(bootstrap: int) -> None:
    if bootstrap < 0 or int(bootstrap) != bootstrap:
        raise ValueError(f"bootstrap must be a non-negative integer (got {bootstrap!r}); pass 0 to skip it.")


def _distinct_count(values: np.ndarray) -> int:
    return len(np.unique(values))


def _check_distinct_values(
    form: str, axis: str, values: np.ndarray, needed: int, what: str, remedy: str = "fix a parameter"
) -> None:
    """Refuse an axis with fewer than ``needed`` distinct values: ``what`` (e.g. "A and alpha") would
    take any of a continuum of values that fit the runs equally well."""
    distinct = np.unique(values)
    if len(distinct) >= needed:
        return
    listed = ", ".join(f"{v:.4g}" for v in distinct[:3])
    raise UnidentifiableError(
        f"The {form} form is unidentifiable from these runs: {axis} takes {len(distinct)} distinct "
        f"value{'s' if len(distinct) != 1 else ''} ({listed}) but {what} need at least {needed}; add runs "
        f"at more {axis} values or {remedy}."
    )
