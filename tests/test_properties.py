"""Property tests of the input checks: any spec is either valid or a SpecError saying, field by field,
what is wrong; flawed runs are refused with one sentence, and runs of an exact multiplicative law are
fitted exactly when they identify it and refused when they do not."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from flows.spec import PRESETS, SpecError, SweepSpec, validate_spec
from tasks import laws

SMOKE = PRESETS["smoke"].model_dump(mode="json")
FIELDS = [
    (section, field)
    for section, info in SweepSpec.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    for field in info.annotation.model_fields
]

text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=6)
scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(scalars.filter(bool), inner, max_size=3),
    max_leaves=6,
)
field_names = st.sampled_from(FIELDS) | st.tuples(st.sampled_from(list(SMOKE)), text)
changes = st.lists(st.tuples(field_names, values), max_size=4)


def assert_valid_or_described(data: object) -> None:
    try:
        spec = validate_spec(data)
    except SpecError as error:  # one sentence per problem: "spec field <field>: <what is wrong>."
        message = str(error)
        assert message.startswith("spec field ") and message.endswith(".") and "\n" not in message, message
    else:
        assert validate_spec(spec.model_dump()) == spec


@settings(max_examples=150, deadline=None)
@given(changes)
def test_a_spec_with_any_fields_changed_is_valid_or_described(changes):
    data = copy.deepcopy(SMOKE)
    for (section, field), value in changes:
        if isinstance(data.get(section), dict):
            data[section][field] = value
        else:
            data[section] = value
    assert_valid_or_described(data)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(text | st.sampled_from(list(SMOKE)), values, max_size=4) | values)
def test_anything_at_all_is_valid_or_described(data):
    assert_valid_or_described(data)


# Runs that the fitter's input checks must refuse, for any law form.
positive = st.floats(min_value=1e-3, max_value=1e12)
not_positive_or_finite = st.floats(max_value=0.0) | st.sampled_from([np.nan, np.inf])


@st.composite
def flawed_runs(draw) -> tuple[str, list, list, list]:
    """A form and its N, D and loss with one flaw: a number that is NaN, infinite, zero or negative,
    fewer runs than any form has parameters, or arrays of different lengths."""
    flaw = draw(st.sampled_from(["number", "too few runs", "lengths"]))
    n = draw(st.integers(0, 3) if flaw == "too few runs" else st.integers(4, 8))
    arrays = [draw(st.lists(positive, min_size=n, max_size=n)) for _ in range(3)]
    if flaw == "number":
        arrays[draw(st.integers(0, 2))][draw(st.integers(0, n - 1))] = draw(not_positive_or_finite)
    elif flaw == "lengths":
        arrays[draw(st.integers(0, 2))].append(draw(positive))
    return draw(st.sampled_from(list(laws.FORMS))), *arrays


@settings(max_examples=200, deadline=None)
@given(flawed_runs())
def test_flawed_runs_are_refused_with_one_sentence_naming_the_input(runs):
    form, N, D, loss = runs
    with pytest.raises(ValueError) as refused:
        laws.fit(form, N, D, loss)
    message = str(refused.value)
    assert "\n" not in message and message.endswith("."), message
    assert re.search(r"\b(N|D|loss|runs|inputs)\b", message, re.IGNORECASE), message


distinct_values = st.lists(st.floats(0.0, 20.0), min_size=2, max_size=4, unique=True).filter(
    lambda logs: min(np.diff(sorted(logs))) > 0.1
)


@st.composite
def multiplicative_runs(draw) -> tuple[bool, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Runs of an exact law loss = a N^b D^c, and whether they identify it: a product grid of 2-4
    sizes by 3-4 token counts does; tokens tied to the size (D = k N^p, constant when p = 0) do not."""
    law = (draw(st.floats(0.1, 10.0)), draw(st.floats(-1.0, 1.0)), draw(st.floats(-1.0, 1.0)))
    log_n = np.array(draw(distinct_values))
    if draw(st.booleans()):
        log_d = np.array(draw(distinct_values.filter(lambda logs: len(logs) >= 3)))
        log_n, log_d = (grid.ravel() for grid in np.meshgrid(log_n, log_d))
        identified = True
    else:
        log_n = np.concatenate([log_n, log_n + 0.05, log_n + 0.11])  # 6-12 runs
        log_d = draw(st.floats(0.0, 15.0)) + draw(st.sampled_from([0.0, 0.5, -1.0, 2.0])) * log_n
        identified = False
    N, D = np.exp(3.0 + log_n), np.exp(3.0 + log_d)
    return identified, N, D, law


@settings(max_examples=50, deadline=None)
@given(multiplicative_runs())
def test_the_multiplicative_form_is_fitted_exactly_when_identified_and_refused_when_not(runs):
    """The outcome is fixed by the runs, not accepted either way: catches a rank check that fits
    collinear runs (exponents that mean nothing) or refuses a product grid, and a reduced form that
    reports b' or c' off the columns' least squares (here b' = b and c' = c, as C = 6 N D)."""
    identified, N, D, (a, b, c) = runs
    loss = a * N**b * D**c
    if not identified:
        with pytest.raises(laws.UnidentifiableError, match="vary N and D independently"):
            laws.fit("multiplicative", N, D, loss)
        return
    result = laws.fit("multiplicative", N, D, loss)
    assert result.form == "multiplicative_reduced" and np.isnan(result.params["d"])
    assert result.params["b"] == pytest.approx(b, abs=1e-9) and result.params["c"] == pytest.approx(
        c, abs=1e-9
    )
    assert result.params["a"] == pytest.approx(a, rel=1e-6) and result.n_points == len(N)
