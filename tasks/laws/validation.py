"""Input checks shared by the fitters: float arrays of one value per run, finite and positive, enough of
them for the form's parameters, enough distinct values on each axis to identify them.  Each failure is a
FitInputError (a ValueError) of one sentence naming the input and the fix; runs that are valid but cannot
identify a form raise its subclass UnidentifiableError.  A sweep records a form whose fit raises a
FitInputError as not fitted, with the message as the reason; any other exception is a bug and surfaces."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


class FitInputError(ValueError):
    """Runs that a fitter cannot fit (too few, not finite and positive, of unequal lengths): the data's
    limit or the caller's input, never a bug in the fitter.  A sweep records the form as not fitted
    with this reason."""


class UnidentifiableError(FitInputError):
    """The runs are valid but cannot determine the form's parameters (e.g. only two distinct D values
    for B and beta): the data's limit, not a caller's typo."""


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
        raise FitInputError(f"{form} got empty inputs ({', '.join(arrays)}); pass at least one value.")
    return list(arrays.values())


def _check_one_dimensional(arrays: dict[str, np.ndarray]) -> None:
    for name, values in arrays.items():
        if values.ndim != 1:
            raise FitInputError(
                f"{name} must be one-dimensional (got shape {values.shape}); pass one value per run."
            )


def _check_equal_lengths(arrays: dict[str, np.ndarray]) -> None:
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise FitInputError(
            f"Inputs have mismatched lengths ({listed}); pass one value per run in every array."
        )


def _check_finite_positive(name: str, values: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise FitInputError(
            f"{name} contains NaN or infinite values (first at index {bad[0]}); drop or fix those runs."
        )
    bad = np.flatnonzero(values <= 0)
    if bad.size:
        raise FitInputError(
            f"{name} must be positive but has {values[bad[0]]:g} at index {bad[0]}; drop or fix those runs."
        )


def _check_enough_points(form: str, n_params: int, n_points: int) -> None:
    if n_points < n_params + 1:
        raise FitInputError(
            f"The {form} form has {n_params} parameters and needs at least {n_params + 1} runs, "
            f"got {n_points}; add runs or fit a form with fewer parameters."
        )


def _check_bootstrap(bootstrap: int) -> None:
    if bootstrap < 0 or int(bootstrap) != bootstrap:
        raise FitInputError(
            f"bootstrap must be a non-negative integer (got {bootstrap!r}); pass 0 to skip it."
        )


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
