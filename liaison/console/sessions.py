"""Server-side sessions: the browser holds only a random id in a secure cookie.

Tokens never reach the browser: the access token the console presents to the
gateway or node stays here, keyed by a 256-bit id in a `__Host-` cookie
(Secure, HttpOnly, SameSite=Lax, path /). Sessions live in memory: a restart
of the console signs everyone out, which is the safe direction.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from liaison.console.oidc import PendingSignIn, SignedIn

COOKIE = "__Host-liaison-console"
# Results kept per session for a redirect-after-post (so selectors never sit in a URL).
MAX_STASHED = 32
MAX_SESSIONS = 10_000
MAX_STARTING = 10_000
# A sign-in not finished in this time must be started again (the provider's pages, a
# password, a second factor).
SIGN_IN_TTL_S = 10 * 60


@dataclass
class Session:
    id: str
    csrf: str
    expires_at: float
    user: SignedIn | None = None
    pending: PendingSignIn | None = None
    stash: OrderedDict[str, Any] = field(default_factory=OrderedDict)

    def keep(self, value: Any) -> str:
        """Keep ``value`` for this session under a new opaque id; the oldest go first."""
        key = secrets.token_urlsafe(16)
        self.stash[key] = value
        while len(self.stash) > MAX_STASHED:
            self.stash.popitem(last=False)
        return key

    def kept(self, key: str) -> Any | None:
        return self.stash.get(key)


class SessionStore:
    """Signed-in sessions, and apart from them the sign-ins still under way.

    Anyone can start a sign-in, so those are kept in a store of their own, with
    a short life: a flood of started sign-ins can push out only other started
    sign-ins, never a signed-in person's session.
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._starting: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def _fresh(self, ttl_s: float) -> Session:
        return Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires_at=time.time() + ttl_s,
        )

    def starting(self, pending: PendingSignIn) -> Session:
        """A session for a sign-in under way: it lives until the sign-in must be done."""
        session = self._fresh(SIGN_IN_TTL_S)
        session.pending = pending
        with self._lock:
            self._starting[session.id] = session
            while len(self._starting) > MAX_STARTING:
                self._starting.popitem(last=False)
        return session

    def signed_in(self, user: SignedIn) -> Session:
        """A new session (a new id: one planted before sign-in is worthless) for ``user``."""
        session = self._fresh(self._ttl_s)
        session.user = user
        with self._lock:
            now = time.time()
            for stale in [k for k, v in self._sessions.items() if v.expires_at < now]:
                del self._sessions[stale]
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            for store in (self._sessions, self._starting):
                session = store.get(session_id)
                if session is None:
                    continue
                if session.expires_at < time.time() or (
                    session.user is not None and session.user.expires_at < time.time()
                ):
                    del store[session_id]
                    return None
                return session
            return None

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
            self._starting.pop(session_id, None)
