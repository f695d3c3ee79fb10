"""Handling codes: what the receiving agency may do with a released value.

In the spirit of Europol SIENA's H0-H3, a holding agency attaches one code to
every field it releases on a follow-up request. The code is signed with the
value, shown beside it wherever an investigator sees it, and kept in the JSON
output, so it travels with the value into case files.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from liaison.errors import InvalidQuery


class HandlingCode(StrEnum):
    H0 = "H0"
    H1 = "H1"
    H2 = "H2"
    H3 = "H3"


MEANINGS: Mapping[HandlingCode, str] = {
    HandlingCode.H0: "usable for investigation and as evidence; may be shared with other police",
    HandlingCode.H1: "not for use in court without a formal (mutual legal assistance) request",
    HandlingCode.H2: "not to be shared onward with anyone without the holder's consent",
    HandlingCode.H3: "for information only: no action on it without the holder's consent",
}

# What a policy's approve rule gives when it names no code: the strictest
# code that still lets an investigation move (the evidence takes a formal request).
DEFAULT_HANDLING = HandlingCode.H1


def handling_code(text: str, *, where: str = "handling code") -> HandlingCode:
    """Parse a code ("H0".."H3", any case); InvalidQuery naming the codes otherwise."""
    try:
        return HandlingCode(text.strip().upper())
    except ValueError:
        codes = ", ".join(f"{c.value} ({m})" for c, m in MEANINGS.items())
        raise InvalidQuery(f"{where} {text!r} is not one of: {codes}") from None


def describe(code: str) -> str:
    """``code`` with its meaning, for people."""
    try:
        return f"{code}: {MEANINGS[HandlingCode(code)]}"
    except ValueError:
        return code
