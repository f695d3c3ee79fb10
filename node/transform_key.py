"""The node's transform key: the secret of its keyed-hash transforms, read from its file.

Shared by ``build_node`` (serving) and ``liaison node check``, which must read
it the same way without pulling in the gRPC server.
"""

from __future__ import annotations

from pathlib import Path

from liaison.errors import ConfigError
from policies.model import Policy, TransformKind

# The key is an HMAC-SHA-256 key: shorter than the hash's output would weaken it.
MIN_BYTES = 32


def read_transform_key(path: Path | None) -> bytes:
    """The key held (in hex) in ``path``; ``b""`` when the node configures none."""
    if path is None:
        return b""
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        raise ConfigError(f"cannot read transform_key {path} ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigError(f"transform_key {path} must hold hex digits") from exc
    if len(secret) < MIN_BYTES:
        raise ConfigError(
            f"transform_key {path} must hold at least {MIN_BYTES} bytes ({2 * MIN_BYTES} hex "
            "digits)"
        )
    return secret


def require_if_used(policy: Policy, secret: bytes) -> None:
    """Refuse a policy with keyed-hash transforms when the node has no key to apply them."""
    keyed = any(
        t.kind is TransformKind.KEYED_HASH for r in policy.permits for t in r.transforms.values()
    )
    if keyed and not secret:
        raise ConfigError(
            "the policy uses keyed-hash transforms but the node has no `transform_key`; "
            "add one (a file of 32 random bytes in hex, e.g. from `liaison init`)"
        )
