"""``keel serve --import support.attacks_logprobe``: code that carelessly logs customer data
(every run's payload, every audit row's details before redaction), so a test can check
that the server's log configuration redacts it anyway."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("keel.probe")


def keel_install(runtime: Any) -> None:
    from engine.worker import Worker

    real_execute = Worker.execute

    def execute(self: Any, run: dict[str, Any]) -> None:
        log.info("probe: run %s payload %s", run["run_id"], run["payload"])
        return real_execute(self, run)

    Worker.execute = execute  # type: ignore[method-assign]

    audit = runtime.audit
    real_append = audit.append

    def append(tenant: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        log.info("probe: audit %s %s", kind, kwargs.get("data"))
        return real_append(tenant, kind, *args, **kwargs)

    audit.append = append
