"""Shared pieces of the JSON schemas (model config, artifact manifest, calibration recipe):
finite numbers, SHA-256 digests, and pydantic's first error as one line naming the file and the field."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError


def finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Real = Annotated[float, AfterValidator(finite)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # a hex digest, whole


def schema_error(exc: ValidationError, where: str) -> str:
    """'WHERE: field a.b.0: message' for the first error (the input itself is not echoed)."""
    error = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: field {field}: {error['msg']}{more}"
