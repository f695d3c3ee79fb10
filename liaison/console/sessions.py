"""Server-side sessions: the browser holds only a random id in a secure cookie.

Tokens never reach the browser: the access token the console presents to the
gateway or node stays here, keyed by a 256-bit id in a `__Host-` cookie
(Secure, HttpOnly, SameSite=Lax, path /). Sessions live in memory: a restart
of the console signs everyone out, which is the safe direction.

A sign-in under way keeps nothing here: anyone can start one, so its state
(state, nonce, PKCE verifier) travels sealed (AES-GCM, a key that never leaves
this process) in a cookie of its own, and a flood of started sign-ins cannot
push out anyone's session or anyone else's sign-in.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from liaison.console.oidc import PendingSignIn, SignedIn
from liaison.identity.pkce import b64url

COOKIE = "__Host-liaison-console"
# Results kept per session for a redirect-after-post (so selectors never sit in a URL).
MAX_STASHED = 32
MAX_SESSIONS = 10_000
# One person signing in again and again pushes out only their own oldest sessions.
MAX_PER_PERSON = 16
SIGN_IN_COOKIE = "__Host-liaison-sign-in"
_SEAL_CONTEXT = b"liaison-console sign-in"
# A sign-in not finished in this time must be started again (the provider's pages, a
# password, a second factor).
SIGN_IN_TTL_S = 10 * 60


@dataclass
class Session:
    id: str
    csrf: str
    expires_at: float
    user: SignedIn | None = None
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
    """Signed-in sessions, at most a few per person and a bounded number in all."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def signed_in(self, user: SignedIn) -> Session:
        """A new session (a new id: one planted before sign-in is worthless) for ``user``.

        One person's many sign-ins push out only that person's oldest sessions.
        """
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires_at=time.time() + self._ttl_s,
            user=user,
        )
        person = (user.issuer, user.subject)
        with self._lock:
            now = time.time()
            for stale in [k for k, v in self._sessions.items() if v.expires_at < now]:
                del self._sessions[stale]
            theirs = [
                k
                for k, v in self._sessions.items()
                if v.user is not None and (v.user.issuer, v.user.subject) == person
            ]
            for old in theirs[: max(0, len(theirs) + 1 - MAX_PER_PERSON)]:
                del self._sessions[old]
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


class SignInSeal:
    """Seals a sign-in under way into a cookie value, and opens it on the way back."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(self, pending: PendingSignIn) -> str:
        nonce = os.urandom(12)
        data = json.dumps(dataclasses.asdict(pending)).encode()
        return b64url(nonce + self._aead.encrypt(nonce, data, _SEAL_CONTEXT))

    def open(self, sealed: str | None) -> PendingSignIn | None:
        """The sign-in sealed here, or None for anything else (forged, altered, garbage)."""
        if not sealed or len(sealed) > 4096:
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
            data = json.loads(self._aead.decrypt(raw[:12], raw[12:], _SEAL_CONTEXT))
            return PendingSignIn(
                state=str(data["state"]),
                nonce=str(data["nonce"]),
                code_verifier=str(data["code_verifier"]),
                started_at=float(data["started_at"]),
            )
        except (ValueError, KeyError, TypeError, InvalidTag):
            return None
