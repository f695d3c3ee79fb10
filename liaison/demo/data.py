"""Synthetic agencies for the demo and benchmarks: local schemas and generated data.

Three fictional agencies keep the same kinds of records under different
table and column names (and even different column types), which is exactly
what node mappings exist for. Hashes, accounts and e-mails are random; a
shared pool overlaps between agencies so that federated queries find matches.
Nothing here is real and no imagery exists.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

CATEGORIES = ("A", "B", "C", "baseline")
PLATFORMS = ("chatapp", "photoshare", "forumx", "gamechat", "mailsvc")
OFFENCES = ("production", "distribution", "possession", "grooming", "extortion")
STATUSES = ("open", "closed", "referred")
EPOCH = dt.date(2019, 1, 1)


@dataclass(frozen=True, slots=True)
class LocalTable:
    """One dataset as an agency stores it."""

    dataset: str
    table: sa.Table
    columns: Mapping[str, str]  # catalog field -> column


@dataclass(frozen=True, slots=True)
class DemoAgency:
    agency_id: str
    name: str
    tables: tuple[LocalTable, ...]

    @property
    def mapping(self) -> dict[str, tuple[str, Mapping[str, str]]]:
        return {t.dataset: (t.table.name, t.columns) for t in self.tables}


def _ruritania() -> DemoAgency:
    md = sa.MetaData()
    media = sa.Table(
        "hash_register",
        md,
        sa.Column("entry_id", sa.Integer, primary_key=True),
        sa.Column("sha256_hex", sa.String(64), index=True),
        sa.Column("md5_hex", sa.String(32), index=True),
        sa.Column("pdq_hex", sa.String(64)),
        sa.Column("cat", sa.String(16)),
        sa.Column("seen_first", sa.Date),
        sa.Column("dossier", sa.String(32)),
        sa.Column("victim_known", sa.Boolean),
        sa.Column("releasable", sa.Boolean),
    )
    accounts = sa.Table(
        "online_ids",
        md,
        sa.Column("rid", sa.Integer, primary_key=True),
        sa.Column("service", sa.String(32)),
        sa.Column("username", sa.String(64), index=True),
        sa.Column("mail", sa.String(128), index=True),
        sa.Column("last_ip", sa.String(45)),
        sa.Column("seen_from", sa.Date),
        sa.Column("seen_to", sa.Date),
        sa.Column("dossier", sa.String(32)),
        sa.Column("releasable", sa.Boolean),
    )
    cases = sa.Table(
        "dossiers",
        md,
        sa.Column("dossier", sa.String(32), primary_key=True),
        sa.Column("offence_code", sa.String(32)),
        sa.Column("state", sa.String(16)),
        sa.Column("opened_on", sa.Date),
        sa.Column("country", sa.String(2)),
        sa.Column("desk", sa.String(64)),
    )
    return DemoAgency(
        "ruritania",
        "Ruritania National Police",
        (
            LocalTable(
                "media",
                media,
                {
                    "sha256": "sha256_hex",
                    "md5": "md5_hex",
                    "pdq": "pdq_hex",
                    "category": "cat",
                    "first_seen": "seen_first",
                    "case_ref": "dossier",
                    "victim_identified": "victim_known",
                    "shareable": "releasable",
                },
            ),
            LocalTable(
                "accounts",
                accounts,
                {
                    "platform": "service",
                    "handle": "username",
                    "email": "mail",
                    "ip": "last_ip",
                    "first_seen": "seen_from",
                    "last_seen": "seen_to",
                    "case_ref": "dossier",
                    "shareable": "releasable",
                },
            ),
            LocalTable(
                "cases",
                cases,
                {
                    "case_ref": "dossier",
                    "offence": "offence_code",
                    "status": "state",
                    "opened": "opened_on",
                    "jurisdiction": "country",
                    "contact": "desk",
                },
            ),
        ),
    )


def _freedonia() -> DemoAgency:
    # Dates kept as ISO text and booleans as integers, as older systems do.
    md = sa.MetaData()
    media = sa.Table(
        "media_items",
        md,
        sa.Column("item_id", sa.Integer, primary_key=True),
        sa.Column("digest_sha256", sa.String(64), index=True),
        sa.Column("digest_md5", sa.String(32), index=True),
        sa.Column("perceptual", sa.String(64)),
        sa.Column("classification", sa.String(16)),
        sa.Column("first_observed", sa.String(10)),
        sa.Column("case_number", sa.String(32)),
        sa.Column("victim_identified", sa.Integer),
        sa.Column("share_flag", sa.Integer),
    )
    accounts = sa.Table(
        "accounts_seen",
        md,
        sa.Column("acc_id", sa.Integer, primary_key=True),
        sa.Column("platform_name", sa.String(32)),
        sa.Column("account_handle", sa.String(64), index=True),
        sa.Column("email_address", sa.String(128), index=True),
        sa.Column("ip_address", sa.String(45)),
        sa.Column("first_activity", sa.String(10)),
        sa.Column("last_activity", sa.String(10)),
        sa.Column("case_number", sa.String(32)),
        sa.Column("share_flag", sa.Integer),
    )
    cases = sa.Table(
        "investigations",
        md,
        sa.Column("case_number", sa.String(32), primary_key=True),
        sa.Column("offence", sa.String(32)),
        sa.Column("status", sa.String(16)),
        sa.Column("opened", sa.String(10)),
        sa.Column("jurisdiction", sa.String(2)),
        sa.Column("contact_desk", sa.String(64)),
    )
    return DemoAgency(
        "freedonia",
        "Freedonia National Central Bureau",
        (
            LocalTable(
                "media",
                media,
                {
                    "sha256": "digest_sha256",
                    "md5": "digest_md5",
                    "pdq": "perceptual",
                    "category": "classification",
                    "first_seen": "first_observed",
                    "case_ref": "case_number",
                    "victim_identified": "victim_identified",
                    "shareable": "share_flag",
                },
            ),
            LocalTable(
                "accounts",
                accounts,
                {
                    "platform": "platform_name",
                    "handle": "account_handle",
                    "email": "email_address",
                    "ip": "ip_address",
                    "first_seen": "first_activity",
                    "last_seen": "last_activity",
                    "case_ref": "case_number",
                    "shareable": "share_flag",
                },
            ),
            LocalTable(
                "cases",
                cases,
                {
                    "case_ref": "case_number",
                    "offence": "offence",
                    "status": "status",
                    "opened": "opened",
                    "jurisdiction": "jurisdiction",
                    "contact": "contact_desk",
                },
            ),
        ),
    )


def _sylvania() -> DemoAgency:
    # A unit without a case register; its perceptual hashes sit beside the file hashes.
    md = sa.MetaData()
    media = sa.Table(
        "evidence_files",
        md,
        sa.Column("file_id", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), index=True),
        sa.Column("md5", sa.String(32), index=True),
        sa.Column("perceptual_hash", sa.String(64)),
        sa.Column("category_code", sa.String(16)),
        sa.Column("added", sa.Date),
        sa.Column("ref", sa.String(32)),
        sa.Column("vid", sa.Boolean),
        sa.Column("ok_to_share", sa.Boolean),
    )
    accounts = sa.Table(
        "subjects_online",
        md,
        sa.Column("subject_id", sa.Integer, primary_key=True),
        sa.Column("network", sa.String(32)),
        sa.Column("nick", sa.String(64), index=True),
        sa.Column("contact_email", sa.String(128), index=True),
        sa.Column("ip", sa.String(45), index=True),
        sa.Column("first_seen", sa.Date),
        sa.Column("last_seen", sa.Date),
        sa.Column("ref", sa.String(32)),
        sa.Column("ok_to_share", sa.Boolean),
    )
    return DemoAgency(
        "sylvania",
        "Sylvania Cyber Crime Unit",
        (
            LocalTable(
                "media",
                media,
                {
                    "sha256": "sha256",
                    "md5": "md5",
                    "pdq": "perceptual_hash",
                    "category": "category_code",
                    "first_seen": "added",
                    "case_ref": "ref",
                    "victim_identified": "vid",
                    "shareable": "ok_to_share",
                },
            ),
            LocalTable(
                "accounts",
                accounts,
                {
                    "platform": "network",
                    "handle": "nick",
                    "email": "contact_email",
                    "ip": "ip",
                    "first_seen": "first_seen",
                    "last_seen": "last_seen",
                    "case_ref": "ref",
                    "shareable": "ok_to_share",
                },
            ),
        ),
    )


AGENCY_FACTORIES: tuple[Callable[[], DemoAgency], ...] = (_ruritania, _freedonia, _sylvania)
INVESTIGATOR_AGENCY = "genovia"


def demo_agencies() -> tuple[DemoAgency, ...]:
    return tuple(f() for f in AGENCY_FACTORIES)


def agency_like(template: str, agency_id: str, name: str) -> DemoAgency:
    """A new agency keeping its records as the demo agency ``template`` does (fresh tables).

    For federations larger than the demo's three: each agency needs a local
    schema, and three shapes are enough to keep node mappings honest.
    """
    factories = {f().agency_id: f for f in AGENCY_FACTORIES}
    try:
        base = factories[template]()
    except KeyError:
        raise ValueError(f"no demo agency {template!r}; use one of {sorted(factories)}") from None
    return DemoAgency(agency_id, name, base.tables)


@dataclass(frozen=True, slots=True)
class Probes:
    """Values the demo queries for, chosen so that answers differ by agency."""

    shared_sha256: str  # held by ruritania and freedonia, not sylvania
    shared_email: str  # held by ruritania and sylvania, not freedonia
    # A re-encoded copy of the shared file: its PDQ is 9 bits from the one
    # ruritania and freedonia hold, and 21 from a variant sylvania holds.
    near_pdq: str
    # A seized device's SHA-256s: mostly unknown, three known somewhere.
    device_sha256s: tuple[str, ...]


def _hex(rng: random.Random, bits: int) -> str:
    return rng.getrandbits(bits).to_bytes(bits // 8, "big").hex()


def _date(rng: random.Random) -> dt.date:
    return EPOCH + dt.timedelta(days=rng.randrange(0, 7 * 365))


@dataclass(frozen=True, slots=True)
class _Media:
    sha256: str
    md5: str
    pdq: str


@dataclass(frozen=True, slots=True)
class _Account:
    platform: str
    handle: str
    email: str
    ip: str


def _shared_pools(seed: int, media: int, accounts: int) -> tuple[list[_Media], list[_Account]]:
    # Separate streams, so that a pool's first items do not depend on the other's size.
    rng = random.Random(seed)
    m = [_Media(_hex(rng, 256), _hex(rng, 128), _hex(rng, 256)) for _ in range(media)]
    rng = random.Random(seed + 1)
    a = [
        _Account(
            rng.choice(PLATFORMS),
            f"user{rng.getrandbits(32):08x}",
            f"u{rng.getrandbits(40):010x}@mail{rng.randrange(20)}.example",
            f"198.51.100.{rng.randrange(1, 255)}"
            if rng.random() < 0.5
            else f"2001:db8::{rng.getrandbits(16):x}",
        )
        for _ in range(accounts)
    ]
    return m, a


def flip_bits(hex_value: str, bits: int, rng: random.Random) -> str:
    """``hex_value`` (a 256-bit hash) with ``bits`` distinct bits flipped."""
    value = int(hex_value, 16)
    for bit in rng.sample(range(256), bits):
        value ^= 1 << bit
    return f"{value:064x}"


def _near_variants(seed: int, pdq: str) -> tuple[str, str]:
    """The investigator's re-encoded copy (9 bits off) and sylvania's edited copy (12 bits off)."""
    rng = random.Random(seed * 31 + 5)
    while True:
        asked = flip_bits(pdq, 9, rng)
        held = flip_bits(pdq, 12, rng)
        if bin(int(asked, 16) ^ int(held, 16)).count("1") == 21:
            return asked, held


def probes(seed: int = 7) -> Probes:
    media, accounts = _shared_pools(seed, 4, 1)
    rng = random.Random(seed * 17 + 3)
    device = [_hex(rng, 256) for _ in range(37)] + [m.sha256 for m in media[1:4]]
    rng.shuffle(device)
    return Probes(
        media[0].sha256,
        accounts[0].email,
        _near_variants(seed, media[0].pdq)[0],
        tuple(device),
    )


def _local_value(column: sa.Column[Any], value: object) -> object:
    if isinstance(value, dt.date) and not isinstance(column.type, sa.Date):
        return value.isoformat()
    if isinstance(value, bool) and not isinstance(column.type, sa.Boolean):
        return int(value)
    return value


def populate(
    agency: DemoAgency,
    engine: sa.Engine,
    *,
    media: int = 4000,
    accounts: int = 1500,
    cases: int = 300,
    seed: int = 7,
    index: int | None = None,
    part: str | None = None,
) -> None:
    """Create the agency's local schema and fill it with synthetic records.

    An agency outside the demo's three gives its ``index`` (its own random
    stream and share of the common pool) and the demo agency whose ``part``
    it plays in the probes (which of them it holds).
    """
    if index is None:
        index = [a.agency_id for a in demo_agencies()].index(agency.agency_id)
    part = part or agency.agency_id
    rng = random.Random(seed * 1000 + index)
    shared_media, shared_accounts = _shared_pools(seed, 1000, 300)
    # Pool item 0 is the demo's probe: fixed holders make the demo's output stable.
    media_holders = {"ruritania", "freedonia"}
    account_holders = {"ruritania", "sylvania"}
    picked_media = [m for i, m in enumerate(shared_media[1:]) if (i + index) % 3 != 0][: media // 8]
    if part in media_holders:
        picked_media.insert(0, shared_media[0])
    elif part == "sylvania":
        # An edited copy of the shared image: another file, a nearby PDQ.
        edited = _near_variants(seed, shared_media[0].pdq)[1]
        picked_media.insert(0, _Media(_hex(rng, 256), _hex(rng, 128), edited))
    picked_accounts = [a for i, a in enumerate(shared_accounts[1:]) if (i + index) % 3 != 0][
        : accounts // 10
    ]
    if part in account_holders:
        picked_accounts.insert(0, shared_accounts[0])
    prefix = agency.agency_id[:3].upper()
    case_refs = [f"{prefix}-{2019 + i % 7}-{i:05d}" for i in range(max(cases, 1))]

    def rows(dataset: str) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        if dataset == "media":
            items = picked_media + [
                _Media(_hex(rng, 256), _hex(rng, 128), _hex(rng, 256))
                for _ in range(media - len(picked_media))
            ]
            for i, m in enumerate(items):
                out.append(
                    {
                        "sha256": m.sha256,
                        "md5": m.md5,
                        "pdq": m.pdq,
                        "category": rng.choices(CATEGORIES, weights=(5, 3, 2, 1))[0],
                        "first_seen": _date(rng),
                        "case_ref": rng.choice(case_refs),
                        "victim_identified": rng.random() < 0.3,
                        # The demo's probe (first item) is shareable, so query 2 shows it.
                        "shareable": i == 0 or rng.random() < 0.85,
                    }
                )
        elif dataset == "accounts":
            own = _shared_pools(seed * 7919 + index, 0, accounts - len(picked_accounts))[1]
            for i, a in enumerate(picked_accounts + own):
                first = _date(rng)
                out.append(
                    {
                        "platform": a.platform,
                        "handle": a.handle,
                        "email": a.email,
                        "ip": a.ip,
                        "first_seen": first,
                        "last_seen": first + dt.timedelta(days=rng.randrange(0, 400)),
                        "case_ref": rng.choice(case_refs),
                        "shareable": i == 0 or rng.random() < 0.85,
                    }
                )
        else:
            for ref in case_refs[:cases]:
                out.append(
                    {
                        "case_ref": ref,
                        "offence": rng.choice(OFFENCES),
                        "status": rng.choice(STATUSES),
                        "opened": _date(rng),
                        "jurisdiction": agency.agency_id[:2].upper(),
                        "contact": f"desk-{rng.randrange(1, 9)}@{agency.agency_id}.police.example",
                    }
                )
        return out

    with engine.begin() as conn:
        for local in agency.tables:
            local.table.metadata.create_all(conn, tables=[local.table])
            records = rows(local.dataset)
            payload = [
                {
                    col: _local_value(local.table.c[col], rec[field])
                    for field, col in local.columns.items()
                }
                for rec in records
            ]
            if payload:
                conn.execute(local.table.insert(), payload)
