"""``keel api-docs``: write (or ``--check``) the HTTP API reference, ``docs/api.md``.

The reference is rendered from the OpenAPI document of the app ``keel serve`` runs (the
console mounted too), built on a throwaway embedded store, so it needs no database server and
no configuration. ``--check`` exits 1 when the committed file is stale: CI runs it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.runtime import Runtime
from keel.config import Settings

__all__ = ["register", "reference_markdown", "DEFAULT_OUT"]

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def reference_markdown() -> str:
    """The reference as ``keel serve`` would document itself today."""
    # imported here: the HTTP stack costs every other keel command a second of start-up
    from api.app import create_app
    from api.reference import render_reference
    from console import mount as mount_console

    with tempfile.TemporaryDirectory(prefix="keel-api-docs-") as d:
        rt = Runtime(Settings(data_dir=Path(d), database_url=None, log_level="WARNING"))
        try:
            app = mount_console(create_app(rt, embedded_worker=False))
            return render_reference(app.openapi())
        finally:
            rt.close()


def cmd_api_docs(args: argparse.Namespace) -> int:
    text = reference_markdown()
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            print(f"keel api-docs: {out} is out of date; run scripts/api-docs", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({text.count(chr(10))} lines)")
    return 0


def register(sub: Any) -> None:
    """Add ``keel api-docs``."""
    p = sub.add_parser("api-docs", help="write the HTTP API reference (docs/api.md) from the OpenAPI document")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write it (default: docs/api.md)")
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from what would be written")
    p.set_defaults(func=cmd_api_docs)
