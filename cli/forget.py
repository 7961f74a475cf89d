"""``keel forget CUSTOMER [--tenant T] [--json]``: erase a customer's data and say what went.

The erasure itself is :func:`engine.forget.forget` (memory, threads, checkpoints, the API's
rows, spans, back-office personal data, audit payloads as digest-keeping tombstones). The
tenant defaults to the one of ``KEEL_FIXTURES`` (or the bundled demo back office), as the
other commands that act on one tenant's back office do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cli.commands import CliError
from engine.forget import forget
from engine.runtime import DEMO_FIXTURES, Runtime
from keel.config import get_settings
from keel.errors import InvalidInput
from tools.fixtures import parse_fixtures_text

__all__ = ["register", "cmd_forget"]


def _default_tenant() -> str:
    path = Path(get_settings().fixtures or DEMO_FIXTURES)
    try:
        parsed = parse_fixtures_text(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CliError(f"{path}: cannot read fixtures ({e.strerror}); give --tenant") from None
    if parsed.fixtures is None:
        raise CliError(f"{path}: not a fixtures file; give --tenant")
    return parsed.fixtures.tenant


def cmd_forget(args: argparse.Namespace) -> int:
    """Forget one customer; the report on standard output (one JSON object with ``--json``)."""
    tenant = args.tenant or _default_tenant()
    rt = Runtime(get_settings())
    try:
        try:
            report = forget(rt, args.customer, tenant)
        except InvalidInput as e:
            raise CliError(str(e)) from None
        chain = rt.audit.verify(tenant)
    finally:
        rt.close()
    if args.json:
        print(json.dumps({**report.as_json(), "audit_chain_ok": chain.ok}, sort_keys=True))
    else:
        for line in report.lines():
            print(line)
        print(f"audit chain of {tenant}: {'verifies' if chain.ok else f'BROKEN at row {chain.first_bad_seq}'}")
    return 0 if chain.ok else 1


def register(sub: Any) -> None:
    """Add ``keel forget`` to keel's parser."""
    f = sub.add_parser("forget", help="erase a customer's memory, threads, checkpoints and audit payloads")
    f.add_argument("customer", metavar="CUSTOMER", help="the customer's id (e.g. C-1001)")
    f.add_argument("--tenant", default=None, help="the customer's tenant (default: the fixtures' tenant)")
    f.add_argument("--json", action="store_true", help="print the report as one JSON object")
    f.set_defaults(func=cmd_forget)
