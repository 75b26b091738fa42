"""How a check blames a field, and how pydantic's errors become one message naming YAML paths.

A field's own check raises :func:`invalid`; a check that sees several fields at once (a model
validator, or a before-validator normalising the mapping) raises :class:`FieldError` naming the
field it blames. :func:`describe` turns the resulting ``ValidationError`` into
``config.host_groups[0].ram_gb: ...; config.api.port: ...``.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["Deferred", "FieldError", "describe", "format_loc", "invalid"]


class FieldError(ValueError):
    """A model-level check that blames one field; :func:`describe` appends ``loc`` to the path."""

    def __init__(self, loc: str | tuple[str | int, ...], message: str, *, sibling: bool = False) -> None:
        super().__init__(message)
        self.loc = (loc,) if isinstance(loc, str) else loc
        self.message = message
        # A sibling's loc replaces the last element of where pydantic reported the error.
        self.sibling = sibling


class Deferred:
    """A cross-field error found in a before-validator, stored in place of a field's value.

    Raising it from that field's own validator (rather than from the model validator) lets
    pydantic go on validating, and reporting, the model's other fields.
    """

    def __init__(self, error: FieldError) -> None:
        self.error = error


def invalid(kind: str, message: str) -> PydanticCustomError:
    """The error a field's own check raises; ``message`` is shown after the field's path as it is."""
    # Messages are formatted here: pydantic's templates know only "{name}", not "{name!r}".
    return PydanticCustomError(kind, "{message}", {"message": message})


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("config", "host_groups", 0, "vcpu")`` -> ``config.host_groups[0].vcpu``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def describe(exc: ValidationError, prefix: tuple[str, ...]) -> str:
    """Every problem in ``exc`` as ``path: message``, joined by ``; `` (each distinct one once)."""
    problems: list[str] = []
    for err in exc.errors():
        loc: tuple[int | str, ...] = (*prefix, *err["loc"])
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc = (*(loc[:-1] if cause.sibling else loc), *cause.loc)
            message = cause.message
        elif isinstance(cause, ValueError):
            message = str(cause)  # drops pydantic's "Value error, " prefix
        problem = f"{format_loc(loc)}: {message}"
        if problem not in problems:
            problems.append(problem)
    return "; ".join(problems)
