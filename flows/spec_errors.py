"""A spec's mistakes as sentences: pydantic's validation errors one per field (dotted path, what is
wrong, the fix), and a YAML parser's message on one line."""

from __future__ import annotations

from pydantic import ValidationError


def one_line(error: Exception) -> str:
    """A parser's message without the excerpt and caret that YAML errors show on lines of their own."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"


def describe_validation_error(error: ValidationError) -> str:
    """One sentence per problem: the field's dotted path, what is wrong, and the fix."""
    sentences = []
    for problem in _one_member_per_union(error.errors()):
        field = ".".join(str(part) for part in problem["loc"] if not _names_a_member(part))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            message = "is not a known field; remove it or check its spelling"
        elif problem["type"] == "missing":
            message = "is required; add it"
        sentences.append(f"spec field {field or '(top level)'}: {message}.")
    return " ".join(sentences)


# Pydantic names in an error's location the union member that a value failed ("constrained-int",
# "ModelShape": grid.model_sizes) and its own validators ("function-after[...]"); neither is a field.
_WRONG_KIND = frozenset({"int_type", "int_parsing", "int_from_float", "dataclass_type", "dict_type"})


def _names_a_member(part: str | int) -> bool:
    return isinstance(part, str) and (part.startswith(("constrained-", "function-")) or part == "ModelShape")


def _member(location: tuple) -> tuple | None:
    """The location up to the union member it passes through, if any."""
    index = next((i for i, part in enumerate(location) if _names_a_member(part)), None)
    return None if index is None else location[: index + 1]


def _one_member_per_union(problems: list[dict]) -> list[dict]:
    """A value that fits no member of a union gets problems from every member: keep those of the
    members that took its kind (a mapping as a shape, a number as a count), else only the first."""
    wrong = {p["loc"] for p in problems if p["type"] in _WRONG_KIND and _member(p["loc"]) == p["loc"]}
    kept = [p for p in problems if _member(p["loc"]) not in wrong]
    covered = {member[:-1] for p in kept if (member := _member(p["loc"]))}
    for problem in problems:
        if problem["loc"] in wrong and problem["loc"][:-1] not in covered:
            kept.append(problem)
            covered.add(problem["loc"][:-1])
    return kept
