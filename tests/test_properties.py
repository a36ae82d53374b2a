"""Property tests of the input checks: any spec is either valid or a SpecError saying, field by field,
what is wrong; any runs given to the fitter are either fitted or refused with one sentence."""

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


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(positive, positive, positive), min_size=4, max_size=12))
def test_any_positive_finite_runs_are_fitted_or_refused_with_one_sentence(rows):
    """The multiplicative form, the one fast enough to fit many times."""
    N, D, loss = (np.array(column) for column in zip(*rows, strict=True))
    try:
        result = laws.fit("multiplicative", N, D, loss)
    except ValueError as refused:
        assert "\n" not in str(refused) and str(refused).endswith("."), str(refused)
    else:
        assert result.n_points == len(rows)
