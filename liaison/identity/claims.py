"""From a verified token's claims to a ``Requester``, as each issuer names them.

Identity providers spell the same facts differently: Keycloak puts roles in
``realm_access.roles``, Entra ID in ``roles`` and scopes in ``scp``, Auth0
wants custom claims under a URL. ``[issuer.claims]`` in the gateway config
says where to look; this module reads there and nowhere else, and refuses
anything that is not the shape the policy engine expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from liaison.messages import Requester

if TYPE_CHECKING:
    # Only an annotation here; importing the config module pulls in SQLAlchemy,
    # which `liaison token issue` would load for nothing.
    from liaison.config import ClaimMapping

MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_CHARS = 64


# Not in liaison/errors.py on purpose: internal control flow that never leaves the
# gateway; TokenVerifier logs it and raises AuthenticationError in its place.
class Refused(Exception):
    """A token is refused: ``reason`` is a stable code for logs, ``message`` for the caller.

    ``detail`` is what the operator's log may say; it differs from ``message``
    where the message quotes a claim other than iss, kid or sub.
    """

    def __init__(self, reason: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.detail = message if detail is None else detail


def claim(claims: Mapping[str, object], name: str) -> object | None:
    """The claim ``name``: as it stands if present, else as a dotted path into objects."""
    if name in claims:
        return claims[name]
    value: object = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def requester_from(
    claims: Mapping[str, object],
    *,
    issuer: str,
    agencies: frozenset[str],
    mapping: ClaimMapping,
    authorized_parties: frozenset[str] = frozenset(),
) -> Requester:
    """The investigator the claims describe, or ``Refused``."""
    if authorized_parties:
        azp = claims.get("azp")
        if not isinstance(azp, str) or azp not in authorized_parties:
            raise Refused(
                "unauthorized_party",
                f"token was issued to client {azp!r}, not to one this gateway accepts from "
                f"issuer {issuer!r}",
                "token `azp` is not one of the issuer's authorized_parties",
            )
    subject = claim(claims, mapping.subject)
    if not isinstance(subject, str) or not subject.strip():
        raise Refused("bad_subject", f"token `{mapping.subject}` must name the investigator")
    agency = mapping.agency_value or _agency(claims, mapping.agency)
    if agency not in agencies:
        raise Refused(
            "agency_not_vouched",
            f"issuer {issuer!r} may not vouch for agency {agency!r}",
            "the issuer may not vouch for the token's agency",
        )
    roles = _roles(claim(claims, mapping.roles), mapping.roles)
    return Requester(agency, subject, roles, issuer, _attributes(claims, mapping.attributes))


def _agency(claims: Mapping[str, object], name: str) -> str:
    agency = claim(claims, name)
    if not isinstance(agency, str) or not agency:
        raise Refused("missing_agency", f"token has no `{name}` claim")
    return agency


def _roles(raw: object, name: str) -> tuple[str, ...]:
    """A list of role names, or one space-separated string (OAuth ``scope`` style)."""
    roles = [r for r in raw.split(" ") if r] if isinstance(raw, str) else raw
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r for r in roles):
        raise Refused(
            "bad_roles",
            f"token `{name}` claim must be a non-empty list of strings or a space-separated string",
        )
    return tuple(str(r) for r in roles)


def _attributes(claims: Mapping[str, object], mapping: str | Mapping[str, str]) -> dict[str, str]:
    """Attributes from one object claim, or each from the claim the mapping names."""
    if isinstance(mapping, str):
        raw = claim(claims, mapping)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise Refused("bad_attributes", f"token `{mapping}` claim must be an object of strings")
        pairs = dict(raw)
    else:
        pairs = {}
        for attribute, name in mapping.items():
            value = claim(claims, name)
            if value is not None:
                pairs[attribute] = value
    if len(pairs) > MAX_ATTRIBUTES:
        raise Refused("bad_attributes", f"token carries more than {MAX_ATTRIBUTES} attributes")
    out = {}
    for key, value in pairs.items():
        if (
            not isinstance(key, str)
            or not isinstance(value, str)
            or not 0 < len(key) <= MAX_ATTRIBUTE_CHARS
            or not 0 < len(value) <= MAX_ATTRIBUTE_CHARS
            or not (key.isprintable() and value.isprintable())
        ):
            raise Refused(
                "bad_attributes",
                f"token attribute {str(key)[:MAX_ATTRIBUTE_CHARS]!r} must be printable text of 1 "
                f"to {MAX_ATTRIBUTE_CHARS} characters",
                "a token attribute is not printable text of the allowed length",
            )
        out[key] = value
    return out
