"""Applying a permit's per-field transforms to released values.

Transforms run on the node, after SQL and before signing, so an untransformed
value never enters an answer. Keyed hashes use the node's own secret: two
answers from the same node can be linked, but nobody else can compute or
reverse them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from policies.model import Transform, TransformKind

REDACTED = "[redacted]"
UNMAPPED = "other"


def apply_transform(
    transform: Transform,
    value: str,
    *,
    secret: bytes,
    scope: str,
    maps: Mapping[str, Mapping[str, str]],
) -> str:
    """Transform the canonical text ``value``; ``scope`` (dataset.field) keys the hash."""
    kind = transform.kind
    if kind is TransformKind.REDACT:
        return REDACTED
    if kind is TransformKind.KEYED_HASH:
        if not secret:
            raise ValueError("keyed-hash needs the node's transform_key")
        mac = hmac.new(secret, f"{scope}\x00{value}".encode(), hashlib.sha256)
        return "kh:" + mac.hexdigest()[:32]
    if kind is TransformKind.MONTH:
        return value[:7]
    if kind is TransformKind.YEAR:
        return value[:4]
    return maps[transform.map_name].get(value, maps[transform.map_name].get("*", UNMAPPED))
