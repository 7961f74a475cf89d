"""The console's sign-in session: a signed, HttpOnly, SameSite=Strict cookie, and CSRF tokens.

A reviewer signs in with their API key once; the browser then holds it only in an HttpOnly
cookie (scripts on the page cannot read it) that is signed and time-limited with
:mod:`itsdangerous`, so a forged or expired cookie is just "signed out". Every request
re-authenticates the key through :meth:`api.deps.ApiState.authenticate` (the API's own
lookup and cache), so a revoked key stops working in the console as soon as in the API.

CSRF: each session carries a random nonce; forms and htmx requests send
``HMAC(secret, nonce)``, checked in constant time on every POST. SameSite=Strict already
keeps other sites' requests from carrying the cookie; the token is the second lock. The
sign-in form itself uses a double-submit token (a signed pre-session cookie).

The signing secret is derived from the runtime's plan-signing key, so every ``keel serve``
process sharing that key accepts the others' sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

__all__ = ["COOKIE", "PRE_COOKIE", "SESSION_MAX_AGE_S", "Session", "SessionCodec"]

COOKIE = "keel_console"
"""Name of the session cookie."""
PRE_COOKIE = "keel_console_pre"
"""Name of the sign-in form's double-submit cookie."""
SESSION_MAX_AGE_S = 8 * 3600
"""A session lasts one working day; then the reviewer signs in again."""


@dataclass(frozen=True)
class Session:
    """What the cookie carries: the API key and the CSRF nonce."""

    key: str
    nonce: str


class SessionCodec:
    """Signs and reads session cookies and derives CSRF tokens, under one secret."""

    def __init__(self, signing_key: bytes) -> None:
        self._secret = hmac.new(signing_key, b"keel-console-session-v1", hashlib.sha256).digest()
        self._cookie = URLSafeTimedSerializer(self._secret, salt="keel-console-session")
        self._pre = URLSafeTimedSerializer(self._secret, salt="keel-console-signin")

    def issue(self, key: str) -> tuple[str, Session]:
        """A new session for ``key``: the cookie value and the session."""
        s = Session(key=key, nonce=secrets.token_urlsafe(16))
        return self._cookie.dumps({"k": s.key, "n": s.nonce}), s

    def read(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``; None when missing, forged, malformed or expired."""
        if not cookie or len(cookie) > 1024:
            return None
        try:
            data = self._cookie.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("k"), str) or not isinstance(data.get("n"), str):
            return None
        return Session(key=data["k"], nonce=data["n"])

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session (what forms send back)."""
        return hmac.new(self._secret, b"csrf:" + session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (constant-time)."""
        return bool(token) and hmac.compare_digest(self.csrf(session), token or "")

    def pre_issue(self) -> tuple[str, str]:
        """The sign-in form's double-submit pair: (cookie value, form token)."""
        token = secrets.token_urlsafe(16)
        return self._pre.dumps(token), token

    def pre_ok(self, cookie: str | None, token: str | None) -> bool:
        """Whether the sign-in form's token matches its signed cookie (at most an hour old)."""
        if not cookie or not token or len(cookie) > 512:
            return False
        try:
            want = self._pre.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return isinstance(want, str) and hmac.compare_digest(want, token)
