"""When a Chinchilla optimum sits in a flat valley: a term negligible or constant over the runs, so the
data do not identify its parameters."""

from __future__ import annotations

import numpy as np

# A Chinchilla optimum is flagged as degenerate when a term stays below _NEGLIGIBLE_LOSS_SHARE of the
# smallest loss, or when an exponent times its variable's log range is below
# _CONSTANT_TERM_LOG_VARIATION (the term is a constant).
_NEGLIGIBLE_LOSS_SHARE = 1e-3
_CONSTANT_TERM_LOG_VARIATION = 0.01


def _chinchilla_degeneracy_note(
    params: dict[str, float], n: np.ndarray, d: np.ndarray, loss: np.ndarray
) -> str:
    """Warn when the optimum sits in a flat valley: a term that is negligible (< 0.1% of the smallest
    loss at every run) or constant (its exponent times the log range of its variable < 0.01)."""
    floor = _NEGLIGIBLE_LOSS_SHARE * float(loss.min())
    problems = ["E ~ 0"] if params["E"] < floor else []
    for name, coefficient, exponent, x in (("N", "A", "alpha", n), ("D", "B", "beta", d)):
        largest_term = params[coefficient] * float(np.max(x ** -params[exponent]))
        if largest_term < floor:
            problems.append(f"the {name} term ~ 0")
        elif abs(params[exponent]) * float(np.log(x.max() / x.min())) < _CONSTANT_TERM_LOG_VARIATION:
            problems.append(f"{exponent} ~ 0 (the {name} term is a constant that trades off with E)")
    if not problems:
        return ""
    return (
        f" Degenerate optimum: {'; '.join(problems)}. The data do not identify these parameters; "
        "compare objectives or predictions rather than parameter values."
    )
