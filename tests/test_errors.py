"""The one classification of infrastructure failures that nodes and workers share (keel.errors)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from keel.errors import is_database_outage, is_transient


class AdminShutdown(psycopg.OperationalError):
    """psycopg raises a subclass like this one when the server restarts."""


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize("exc", [AdminShutdown("terminating connection"), sqlite3.OperationalError("locked"),
                                 _caused(RuntimeError("audit write failed"), psycopg.InterfaceError("closed"))])
def test_a_database_failure_anywhere_in_the_chain_is_an_outage_and_transient(exc):
    assert is_database_outage(exc) and is_transient(exc)


def test_a_model_failure_is_neither():
    exc = _caused(ValueError("invalid output"), KeyError("route"))
    assert not is_database_outage(exc) and not is_transient(exc)


def test_an_exception_may_say_for_itself_and_the_first_that_does_decides():
    class LeaseGone(Exception):
        transient = False

    class Flaky(Exception):
        transient = True

    assert not is_transient(_caused(LeaseGone("lost"), TimeoutError()))
    assert is_transient(_caused(RuntimeError("x"), Flaky()))
    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
