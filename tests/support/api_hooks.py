"""``keel worker --import support.api_hooks``: once ``$KEEL_TEST_KILL_MARKER.armed``
exists, the first worker to perform a side effect of the support graph writes its pid to ``$KEEL_TEST_KILL_MARKER`` and hangs there (the
effect is committed, the checkpoint after it is not) so the test can SIGKILL it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from support.api_toy import register


def keel_install(runtime: Any) -> None:
    register()
    marker = os.environ.get("KEEL_TEST_KILL_MARKER")
    if not marker:
        return
    from tools.registry import side_effect_tools

    tools = runtime.tools
    real_call = tools.call

    def call_then_hang(name, args, ctx):
        res = real_call(name, args, ctx)
        if name in side_effect_tools() and Path(marker + ".armed").exists() and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            time.sleep(120)
        return res

    tools.call = call_then_hang
