"""keel's HTTP error: ``{"detail": message, "code": code}`` with the status (and headers) given."""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["http_error"]


def http_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An HTTPException whose body is ``{"detail": message, "code": code}``."""
    exc = HTTPException(status, message, headers=headers)
    exc.code = code  # type: ignore[attr-defined]
    return exc
