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
    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires_at=time.time() + self._ttl_s,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at < time.time() or (
                session.user is not None and session.user.expires_at < time.time()
            ):
                del self._sessions[session_id]
                return None
            return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
