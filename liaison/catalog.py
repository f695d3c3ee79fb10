"""The federation catalog: the common data model every node and gateway speaks.

Datasets and typed fields are fixed per catalog version; nodes map them onto
their own tables in config, so local schemas never cross the wire. Values
travel as canonical text, parsed here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from liaison.errors import CatalogError, InvalidValue

CATALOG_VERSION = "liaison-catalog/1"
MAX_TEXT_LENGTH = 256


class FieldType(StrEnum):
    HEX256 = "hex256"
    HEX128 = "hex128"
    TEXT = "text"
    DATE = "date"
    BOOL = "bool"
    INT = "int"
    IP = "ip"
    EMAIL = "email"

    @property
    def orderable(self) -> bool:
        return self in (FieldType.DATE, FieldType.INT)


SqlValue = str | int | bool | dt.date

_HEX_LENGTH = {FieldType.HEX256: 64, FieldType.HEX128: 32}
_HEX = re.compile(r"[0-9a-f]+")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s.]{1,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: FieldType
    description: str
    # A selector identifies a person or an item; audit logs keep only its keyed hash.
    selector: bool = False
    # A perceptual hash: queries may ask for near-duplicates within a distance.
    near: bool = False
    # Computed by the node from this other field, never stored: it can be
    # released, not matched on or grouped by.
    computed_from: str = ""
    # Identifies a record (a hash, an e-mail, a handle, an IP, a case
    # reference): a lookup by it asks about something known. Every other field
    # is a category or a detail, and matching on it alone would list records.
    identifies: bool = False

    @property
    def category(self) -> bool:
        """A field that sorts records into groups rather than naming one."""
        return not self.identifies and not self.computed_from

    def parse(self, text: str) -> SqlValue:
        """Parse canonical text into the Python value bound into SQL."""
        return parse_value(self.type, text, self.name)

    def canonical(self, text: str) -> str:
        """Canonical text of a user-supplied value (lower-case hex, ISO date, ...)."""
        return format_value(self.type, self.parse(text))


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    description: str
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.fields)
        raise CatalogError(f"dataset {self.name!r} has no field {name!r}; its fields are: {known}")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def identifying_fields(self) -> frozenset[str]:
        """Fields whose value names a record: a records query must look one of them up."""
        return frozenset(f.name for f in self.fields if f.identifies)


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    datasets: tuple[Dataset, ...]
    purposes: tuple[str, ...]

    def dataset(self, name: str) -> Dataset:
        for d in self.datasets:
            if d.name == name:
                return d
        known = ", ".join(d.name for d in self.datasets)
        raise CatalogError(f"unknown dataset {name!r}; the catalog has: {known}")

    def check_purpose(self, purpose: str) -> None:
        if purpose not in self.purposes:
            raise CatalogError(
                f"unknown purpose {purpose!r}; use one of: {', '.join(self.purposes)}"
            )


def parse_value(ftype: FieldType, text: str, field_name: str) -> SqlValue:
    def bad(expected: str) -> InvalidValue:
        shown = text if len(text) <= 80 else text[:77] + "..."
        return InvalidValue(f"field {field_name!r}: {shown!r} is not {expected}")

    if ftype in _HEX_LENGTH:
        n = _HEX_LENGTH[ftype]
        lowered = text.strip().lower()
        if len(lowered) != n or not _HEX.fullmatch(lowered):
            raise bad(f"{n} hexadecimal digits")
        return lowered
    if ftype is FieldType.DATE:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            raise bad("a date as YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(text)
        except ValueError as exc:
            raise bad("a valid calendar date (YYYY-MM-DD)") from exc
    if ftype is FieldType.BOOL:
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise bad("true or false")
        return lowered == "true"
    if ftype is FieldType.INT:
        if not re.fullmatch(r"-?[0-9]{1,18}", text.strip()):
            raise bad("a whole number")
        return int(text)
    if ftype is FieldType.IP:
        # Zone ids ("fe80::1%eth0") carry free text past every other check.
        if "%" in text:
            raise bad("an IPv4 or IPv6 address without a zone id")
        try:
            return ipaddress.ip_address(text.strip()).compressed
        except ValueError as exc:
            raise bad("an IPv4 or IPv6 address") from exc
    if ftype is FieldType.EMAIL:
        lowered = text.strip().lower()
        if not _EMAIL.fullmatch(lowered) or _CONTROL.search(lowered):
            raise bad("an e-mail address")
        return lowered
    if len(text) > MAX_TEXT_LENGTH:
        raise bad(f"text of at most {MAX_TEXT_LENGTH} characters")
    if _CONTROL.search(text):
        raise bad("printable text (it has control characters)")
    return text


def format_value(ftype: FieldType, value: object) -> str:
    """Canonical text of a value read from a database (or parsed from text)."""
    if ftype is FieldType.BOOL:
        if isinstance(value, str):
            return "true" if value.strip().lower() in ("true", "1", "t", "yes") else "false"
        return "true" if value else "false"
    if ftype is FieldType.DATE:
        if isinstance(value, dt.datetime):
            return value.date().isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        return str(value)[:10]
    if ftype in _HEX_LENGTH or ftype is FieldType.EMAIL:
        return str(value).strip().lower()
    return str(value)


def _f(
    name: str,
    ftype: FieldType,
    description: str,
    *,
    selector: bool = False,
    near: bool = False,
    identifies: bool = False,
) -> Field:
    """A catalog field; selectors always identify a record, other fields may too."""
    return Field(name, ftype, description, selector, near, identifies=identifies or selector)


CATALOG_V1 = Catalog(
    version=CATALOG_VERSION,
    purposes=(
        "csam-investigation",
        "victim-identification",
        "offender-identification",
        "statistics",
    ),
    datasets=(
        Dataset(
            "media",
            "Known abuse material, by hash; never the imagery itself",
            (
                _f("sha256", FieldType.HEX256, "SHA-256 of the file", selector=True),
                _f("md5", FieldType.HEX128, "MD5 of the file", selector=True),
                _f(
                    "pdq",
                    FieldType.HEX256,
                    "PDQ perceptual hash (256 bits)",
                    selector=True,
                    near=True,
                ),
                Field(
                    "pdq_distance",
                    FieldType.INT,
                    "Bits between this record's PDQ and the nearest hash asked "
                    "(near-duplicate queries only)",
                    computed_from="pdq",
                ),
                _f("category", FieldType.TEXT, "Classification category"),
                _f("first_seen", FieldType.DATE, "Date the agency first saw the file"),
                _f("case_ref", FieldType.TEXT, "Agency case reference", identifies=True),
                _f("victim_identified", FieldType.BOOL, "Whether the victim is identified"),
                _f("shareable", FieldType.BOOL, "Whether the agency marked it shareable"),
            ),
        ),
        Dataset(
            "accounts",
            "Online accounts linked to investigations",
            (
                _f("platform", FieldType.TEXT, "Service the account is on"),
                _f("handle", FieldType.TEXT, "User name on the platform", selector=True),
                _f("email", FieldType.EMAIL, "E-mail address, lower case", selector=True),
                _f("ip", FieldType.IP, "Last known IP address", selector=True),
                _f("first_seen", FieldType.DATE, "First activity seen"),
                _f("last_seen", FieldType.DATE, "Last activity seen"),
                _f("case_ref", FieldType.TEXT, "Agency case reference", identifies=True),
                _f("shareable", FieldType.BOOL, "Whether the agency marked it shareable"),
            ),
        ),
        Dataset(
            "cases",
            "Investigations and their state",
            (
                _f("case_ref", FieldType.TEXT, "Agency case reference", selector=True),
                _f("offence", FieldType.TEXT, "Offence code"),
                _f("status", FieldType.TEXT, "open, closed or referred"),
                _f("opened", FieldType.DATE, "Date the case was opened"),
                _f("jurisdiction", FieldType.TEXT, "ISO country code"),
                _f("contact", FieldType.TEXT, "Desk to contact about the case"),
            ),
        ),
    ),
)
