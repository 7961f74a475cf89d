"""Health and server info (no auth: they reveal nothing tenant-specific)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["meta"])


@router.get("/ok", summary="Liveness")
def ok() -> dict:
    """``{"ok": true}`` while the process serves requests."""
    return {"ok": True}


@router.get("/info", summary="Server info")
def info() -> dict:
    """Version and capabilities, in the shape langgraph-sdk and Studio probe."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("keel")
    except PackageNotFoundError:
        v = "0.1.0"
    return {
        "version": v,
        "langgraph_py_version": version("langgraph"),
        "flags": {"assistants": True, "crons": False, "langsmith": False, "strict_resume": False},
        "host": {"kind": "keel"},
    }
