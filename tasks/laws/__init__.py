"""Scaling-law fitting: Chinchilla, Kaplan, single power laws and a multiplicative form.

Plain numpy/scipy, so a notebook can ``from tasks.laws import fit_chinchilla`` and fit its own runs:

    result = fit_chinchilla(N, D, loss, bootstrap=1000)   # FitResult: params, ci_low/high, note, ...
    optimum = compute_optimal(result, [1e21, 1e23])       # N_opt, D_opt with a bootstrap band of N_opt

Public API: FitResult, fit_chinchilla, fit_power_law, fit_kaplan, fit_multiplicative, fit / FORMS,
compute_optimal (under 6 N D, or a FlopsPerToken from flops_per_token_from_runs), isoflop_optima,
design_cells and target_interval (which runs to add next, and the interval they narrow),
extrapolation_check, prediction_bands, result_to_dict, chinchilla_objective, chinchilla_start_grid,
SOLVERS (fit_chinchilla's solver=), FitInputError, UnidentifiableError.  Invalid input raises ValueError
saying what is wrong and how to fix it: runs a fitter cannot fit raise its subclass FitInputError, and
valid runs that cannot determine a form's parameters (fewer than 3 distinct N values for A and alpha,
say) FitInputError's subclass UnidentifiableError.

The modules, from the bottom up:
    validation       input checks shared by every fitter
    objective        log-space models and the Huber objective, batched over parameter rows
    optimizer        a batched L-BFGS and its multistart (knows nothing of scaling laws)
    uncertainty      sandwich covariance and delta method, bootstrap samples and percentile intervals
    predictors       predicted loss of each result form
    results          what the fitters return; a fit as a JSON-ready dict
    vpnls            variable projection, fit_chinchilla's alternative solver
    degeneracy       flat-valley warnings of a Chinchilla optimum
    forms            Chinchilla, Kaplan and the power laws, fitted in log space
    multiplicative   the log-linear form and its rank-deficiency detection
    registry         FORMS, one entry per form (fit, predict, params, bootstrap), and ``fit``
    compute          C = 6 N D, and the per-token FLOPs of a sweep's own accounting
    compute_optimal  compute-optimal allocation from a Chinchilla fit, under either accounting
    design           which runs to add next: a cost-aware design that narrows N_opt's interval
    isoflop          IsoFLOP profiles (Chinchilla's Approach 2)
    extrapolation    fit on the smaller runs, predict the larger ones; prediction bands
"""

from tasks.laws.compute import FLOPS_PER_PARAM_TOKEN, FlopsPerToken, flops_per_token_from_runs
from tasks.laws.compute_optimal import compute_optimal
from tasks.laws.design import CellDesign, design_cells, target_interval
from tasks.laws.extrapolation import extrapolation_check, prediction_bands
from tasks.laws.forms import (
    HUBER_DELTA_CHINCHILLA,
    chinchilla_objective,
    chinchilla_start_grid,
    fit_chinchilla,
    fit_kaplan,
    fit_power_law,
)
from tasks.laws.isoflop import (
    ISOFLOP_COMPUTE_RTOL,
    Parabola,
    equal_compute_groups,
    fit_parabola,
    isoflop_optima,
    line_fit,
    student_t_95,
)
from tasks.laws.multiplicative import MULTIPLICATIVE_RANK_RTOL, fit_multiplicative
from tasks.laws.predictors import _predict_chinchilla as _predict_chinchilla
from tasks.laws.registry import FORMS, BootstrapUnavailable, LawForm, fit
from tasks.laws.results import (
    ComputeOptimal,
    ExtrapolationResult,
    FitResult,
    IsoFlopGroup,
    IsoFlopResult,
    PredictionBands,
    result_to_dict,
)
from tasks.laws.uncertainty import Z_95
from tasks.laws.validation import FitInputError, UnidentifiableError
from tasks.laws.vpnls import SOLVERS

__all__ = [
    "FLOPS_PER_PARAM_TOKEN",
    "FORMS",
    "HUBER_DELTA_CHINCHILLA",
    "ISOFLOP_COMPUTE_RTOL",
    "MULTIPLICATIVE_RANK_RTOL",
    "SOLVERS",
    "Z_95",
    "BootstrapUnavailable",
    "CellDesign",
    "ComputeOptimal",
    "ExtrapolationResult",
    "FitInputError",
    "FitResult",
    "FlopsPerToken",
    "IsoFlopGroup",
    "IsoFlopResult",
    "LawForm",
    "Parabola",
    "PredictionBands",
    "UnidentifiableError",
    "chinchilla_objective",
    "chinchilla_start_grid",
    "compute_optimal",
    "design_cells",
    "equal_compute_groups",
    "extrapolation_check",
    "fit",
    "fit_chinchilla",
    "fit_kaplan",
    "fit_multiplicative",
    "fit_parabola",
    "fit_power_law",
    "flops_per_token_from_runs",
    "isoflop_optima",
    "line_fit",
    "prediction_bands",
    "result_to_dict",
    "student_t_95",
    "target_interval",
]
