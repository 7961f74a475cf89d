"""Admission: a new run is counted against the daily quotas before anything is queued.

Each tenant, and each user of it, has daily quotas of runs and model tokens
(``[budgets]`` of the policy pack, :mod:`guards.budgets`). A request that would start a
run while one is spent is refused here, before a thread or a run is stored: a spent quota
must not turn every request into a stored, escalated run, and the caller learns when to
retry (the API answers 429 with ``Retry-After``, from :class:`QuotaExceeded`). Resumes of
runs already admitted are never counted (a reviewer must be able to finish them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from engine.runtime import Runtime
from guards.budgets import QuotaRefusal
from keel.errors import BudgetExceeded
from keel.principals import Principal

__all__ = ["QuotaExceeded", "quota_clock", "check_admission", "admitted"]


class QuotaExceeded(BudgetExceeded):
    """A new run refused by a daily quota; ``refusal`` says whose, which and until when."""

    code = "quota_exceeded"

    def __init__(self, refusal: QuotaRefusal) -> None:
        super().__init__(refusal.message())
        self.refusal = refusal


def quota_clock(rt: Runtime) -> datetime:
    """The quotas' day: ``KEEL_NOW`` if set, else the wall clock, never the embedded demo's
    frozen day (``rt.now()``), on which a spent quota would never reset."""
    return rt.settings.clock()


def check_admission(rt: Runtime, principal: Principal) -> None:
    """Raise :class:`QuotaExceeded` if a new run of ``principal`` would be refused.

    A read only: callers that create a thread for the run (tickets, stateless runs,
    ``if_not_exists``, forks) check first, so a refused request stores nothing. The count
    itself is taken by :func:`admitted`.
    """
    refusal = rt.tokens.check(principal.tenant, principal.user_id, quota_clock(rt))
    if refusal is not None:
        raise QuotaExceeded(refusal)


@contextmanager
def admitted(rt: Runtime, principal: Principal) -> Iterator[None]:
    """Count one new run against the tenant's and the user's daily quotas
    (:class:`QuotaExceeded` if one is spent, nothing counted), and give it back if the
    block fails to queue the run."""
    now = quota_clock(rt)
    refusal = rt.tokens.admit(principal.tenant, principal.user_id, now)
    if refusal is not None:
        raise QuotaExceeded(refusal)
    try:
        yield
    except BaseException:
        rt.tokens.release(principal.tenant, principal.user_id, now)
        raise
