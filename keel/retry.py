"""keel's one retry policy: exponential backoff with equal jitter, driven by tenacity.

Three places retry: the tool runner (each call, in-process), the worker (a run, through the
queue's ``available_at``) and start-up (``keel serve|worker`` waiting for the database). They
share :class:`Backoff`, one formula for the delay before retry ``n``, and the two loops run
on :meth:`RetryPolicy.retrying` (tenacity's ``Retrying``), deciding what to retry with
:func:`keel.errors.is_retryable` unless told otherwise. The worker does not loop: it stores
``now + backoff.delay(retries)`` on the run and another claim picks it up then.

Why equal jitter (half fixed, half random) rather than full jitter: the fixed half guarantees
spacing between attempts (a database that is restarting gets time to come back), the random
half spreads the callers that failed together against one flaky dependency.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from keel.errors import is_retryable

__all__ = ["Backoff", "RetryPolicy"]


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (from 1): ``exp = min(cap_s, base_s * 2**(n-1))``, waited as
    ``exp/2`` plus up to ``exp/2`` at random."""

    base_s: float
    """The first retry's full delay."""
    cap_s: float
    """The longest full delay."""

    def delay(self, retry: int, rnd: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry`` (counted from 1)."""
        exp = min(self.cap_s, self.base_s * 2 ** max(0, retry - 1))
        return exp / 2 + (rnd or random).random() * exp / 2


class _WaitBackoff(tenacity.wait.wait_base):
    """tenacity's wait strategy for a :class:`Backoff`: after attempt ``n`` fails, retry ``n``."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.backoff.delay(retry_state.attempt_number)


@dataclass(frozen=True)
class RetryPolicy:
    """How an operation is retried: which failures, how long apart, until when.

    ``max_attempts`` and ``timeout_s`` bound the loop (either or both; neither: forever);
    the last failure is re-raised unchanged when they are spent, and a failure ``retry_on``
    rejects is re-raised at once.
    """

    backoff: Backoff
    max_attempts: int | None = None
    """Attempts in all, the first included."""
    timeout_s: float | None = None
    """No retry starts after this many seconds from the first attempt."""
    retry_on: Callable[[BaseException], bool] = field(default=is_retryable)
    """Which failures are worth another attempt (default: :func:`keel.errors.is_retryable`)."""

    def retrying(
        self,
        *,
        sleep: Callable[[float], Any] = time.sleep,
        before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.Retrying:
        """A tenacity ``Retrying`` for this policy; call it with the operation."""
        stops = []
        if self.max_attempts is not None:
            stops.append(tenacity.stop_after_attempt(self.max_attempts))
        if self.timeout_s is not None:
            stops.append(tenacity.stop_before_delay(self.timeout_s))
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.retry_on),
            wait=_WaitBackoff(self.backoff),
            stop=tenacity.stop_any(*stops) if stops else tenacity.stop_never,
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
