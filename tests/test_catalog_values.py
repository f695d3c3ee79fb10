"""Catalog values and query shapes: what parses, its canonical text, and what is refused."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liaison.catalog import CATALOG_V1, MAX_TEXT_LENGTH, Field, FieldType, format_value
from liaison.errors import CatalogError, InvalidQuery, InvalidValue
from liaison.query import (
    MAX_CASE_REF_LENGTH,
    MAX_IN_VALUES,
    MAX_LIMIT,
    MAX_PREDICATES,
    Comparator,
    Operation,
    Predicate,
    Query,
    validate_case_ref,
    validate_query,
)

SHA256 = "ab" * 32
MD5 = "cd" * 16


def field_of(ftype: FieldType) -> Field:
    return Field(f"f_{ftype.value}", ftype, "a test field")


def eq(name: str, value: str) -> Predicate:
    return Predicate(name, Comparator.EQ, (value,))


def refused(ftype: FieldType, text: str, expected: str) -> str:
    """The exact message a refused value gets (the value shown as its repr)."""
    return re.escape(f"field 'f_{ftype.value}': {text!r} is not {expected}")


# --- hashes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ftype", "text", "canonical"),
    [
        (FieldType.HEX256, "AB" * 32, "ab" * 32),
        (FieldType.HEX256, "aB" * 32, "ab" * 32),
        (FieldType.HEX256, f"  {'0F' * 32}\n", "0f" * 32),
        (FieldType.HEX128, "DEADBEEF" * 4, "deadbeef" * 4),
        (FieldType.HEX128, "0123456789abcdef" * 2, "0123456789abcdef" * 2),
    ],
)
def test_hex_is_folded_to_lower_case_and_trimmed(
    ftype: FieldType, text: str, canonical: str
) -> None:
    field = field_of(ftype)

    result = field.canonical(text)

    assert result == canonical
    assert field.parse(text) == canonical


@pytest.mark.parametrize(
    ("ftype", "text", "digits"),
    [
        (FieldType.HEX256, "a" * 63, 64),
        (FieldType.HEX256, "a" * 65, 64),
        (FieldType.HEX256, "g" * 64, 64),
        (FieldType.HEX256, "0x" + "a" * 62, 64),
        (FieldType.HEX256, "", 64),
        (FieldType.HEX128, "a" * 31, 32),
        (FieldType.HEX128, "a" * 33, 32),
        (FieldType.HEX128, "a" * 64, 32),
        (FieldType.HEX128, "ab cd" + "e" * 27, 32),
    ],
)
def test_hex_of_the_wrong_length_or_alphabet_is_refused(
    ftype: FieldType, text: str, digits: int
) -> None:
    field = field_of(ftype)

    with pytest.raises(InvalidValue, match=refused(ftype, text, f"{digits} hexadecimal digits")):
        field.canonical(text)


def test_a_long_refused_value_is_shown_shortened() -> None:
    field = field_of(FieldType.HEX256)
    text = "z" * 500

    with pytest.raises(InvalidValue) as caught:
        field.canonical(text)

    assert str(caught.value) == (
        f"field 'f_hex256': {'z' * 77 + '...'!r} is not 64 hexadecimal digits"
    )


# --- dates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("2024-02-29", dt.date(2024, 2, 29)),
        ("2000-02-29", dt.date(2000, 2, 29)),
        ("1999-12-31", dt.date(1999, 12, 31)),
        ("0001-01-01", dt.date(1, 1, 1)),
    ],
)
def test_iso_dates_parse_to_dates(text: str, parsed: dt.date) -> None:
    field = field_of(FieldType.DATE)

    value = field.parse(text)
    canonical = field.canonical(text)

    assert value == parsed
    assert canonical == text


@pytest.mark.parametrize(
    "text", ["2024-13-40", "2023-02-29", "1900-02-29", "2024-04-31", "2024-00-10", "0000-01-01"]
)
def test_impossible_calendar_dates_are_refused(text: str) -> None:
    field = field_of(FieldType.DATE)

    with pytest.raises(
        InvalidValue, match=refused(FieldType.DATE, text, "a valid calendar date (YYYY-MM-DD)")
    ):
        field.canonical(text)


@pytest.mark.parametrize(
    "text",
    ["2024-1-5", "20240105", "05/01/2024", "2024-01-05T00:00:00", " 2024-01-05", "", "yesterday"],
)
def test_dates_not_written_as_yyyy_mm_dd_are_refused(text: str) -> None:
    field = field_of(FieldType.DATE)

    with pytest.raises(InvalidValue, match=refused(FieldType.DATE, text, "a date as YYYY-MM-DD")):
        field.canonical(text)


def test_database_dates_and_datetimes_format_as_iso_dates() -> None:
    moment = dt.datetime(2024, 3, 1, 23, 59, 59)

    texts = (
        format_value(FieldType.DATE, moment),
        format_value(FieldType.DATE, moment.date()),
        format_value(FieldType.DATE, "2024-03-01 23:59:59"),
    )

    assert texts == ("2024-03-01", "2024-03-01", "2024-03-01")


# --- booleans and whole numbers ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed", "canonical"),
    [
        ("true", True, "true"),
        ("TRUE", True, "true"),
        (" True ", True, "true"),
        ("false", False, "false"),
        ("False", False, "false"),
    ],
)
def test_booleans_are_true_or_false_in_any_case(text: str, parsed: bool, canonical: str) -> None:
    field = field_of(FieldType.BOOL)

    value = field.parse(text)
    result = field.canonical(text)

    assert value is parsed
    assert result == canonical


@pytest.mark.parametrize("text", ["yes", "1", "0", "t", "", "truthy", "true false"])
def test_anything_but_true_or_false_is_refused_as_a_boolean(text: str) -> None:
    field = field_of(FieldType.BOOL)

    with pytest.raises(InvalidValue, match=refused(FieldType.BOOL, text, "true or false")):
        field.canonical(text)


@pytest.mark.parametrize(
    ("text", "parsed", "canonical"),
    [
        ("0", 0, "0"),
        ("42", 42, "42"),
        ("-7", -7, "-7"),
        ("007", 7, "7"),
        ("-0", 0, "0"),
        (" 12 ", 12, "12"),
        ("9" * 18, int("9" * 18), "9" * 18),
    ],
)
def test_whole_numbers_parse_and_lose_leading_zeros(text: str, parsed: int, canonical: str) -> None:
    field = field_of(FieldType.INT)

    value = field.parse(text)
    result = field.canonical(text)

    assert value == parsed
    assert result == canonical


@pytest.mark.parametrize("text", ["1.5", "1e3", "+1", "--1", "0x10", "", "1 000", "9" * 19])
def test_anything_but_a_bounded_whole_number_is_refused(text: str) -> None:
    field = field_of(FieldType.INT)

    with pytest.raises(InvalidValue, match=refused(FieldType.INT, text, "a whole number")):
        field.canonical(text)


# --- IP addresses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 198.51.100.7\n", "198.51.100.7"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("FE80:0:0:0:0:0:0:0", "fe80::"),
        ("0:0:0:0:0:0:0:0", "::"),
        ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ],
)
def test_ip_addresses_take_their_compressed_canonical_form(text: str, canonical: str) -> None:
    field = field_of(FieldType.IP)

    result = field.canonical(text)

    assert result == canonical


@pytest.mark.parametrize(
    "text",
    ["256.0.0.1", "192.0.2", "192.0.2.01", "2001:db8:::1", "2001:db8::g", "localhost", "", "1"],
)
def test_malformed_ip_addresses_are_refused(text: str) -> None:
    field = field_of(FieldType.IP)

    with pytest.raises(InvalidValue, match=refused(FieldType.IP, text, "an IPv4 or IPv6 address")):
        field.canonical(text)


@pytest.mark.parametrize(
    "text", ["fe80::1%eth0", "fe80::1%' OR 1=1 --", "fe80::1%\x00", "fe80::1%" + "x" * 300]
)
def test_an_ip_address_with_a_zone_id_is_refused(text: str) -> None:
    # A zone id (RFC 4007 "%eth0") only means something on the host that wrote it, and
    # Python's parser accepts any text after "%": control characters, quotes, unbounded
    # length. An IP selector must be just an address.
    field = field_of(FieldType.IP)
    shown = text if len(text) <= 80 else text[:77] + "..."

    with pytest.raises(
        InvalidValue,
        match=refused(FieldType.IP, shown, "an IPv4 or IPv6 address without a zone id"),
    ):
        field.canonical(text)


# --- e-mail addresses -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Alice@Example.ORG", "alice@example.org"),
        ("  BOB.Smith+tag@Mail.Example.COM \t", "bob.smith+tag@mail.example.com"),
        ("u0123@mail7.example", "u0123@mail7.example"),
    ],
)
def test_email_addresses_are_trimmed_and_lower_cased(text: str, canonical: str) -> None:
    field = field_of(FieldType.EMAIL)

    result = field.canonical(text)

    assert result == canonical


@pytest.mark.parametrize(
    "text",
    [
        "alice",
        "alice@",
        "@example.org",
        "alice@example",
        "alice@@example.org",
        "al ice@example.org",
        "alice@example.",
        "a" * 65 + "@example.org",
        "",
    ],
)
def test_malformed_email_addresses_are_refused(text: str) -> None:
    field = field_of(FieldType.EMAIL)

    with pytest.raises(InvalidValue, match=refused(FieldType.EMAIL, text, "an e-mail address")):
        field.canonical(text)


@pytest.mark.parametrize("text", ["a\x00b@example.org", "alice@exa\x7fmple.org"])
def test_email_addresses_with_control_characters_are_refused(text: str) -> None:
    # No e-mail address (RFC 5322) holds NUL or DEL; PostgreSQL refuses NUL in text outright.
    field = field_of(FieldType.EMAIL)

    with pytest.raises(InvalidValue, match=refused(FieldType.EMAIL, text, "an e-mail address")):
        field.canonical(text)


# --- free text --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["A", " padded stays padded ", "' OR 1=1 --", "Ünïcödé ✓ 漢字", "x" * MAX_TEXT_LENGTH, ""],
)
def test_printable_text_up_to_the_limit_is_kept_verbatim(text: str) -> None:
    field = field_of(FieldType.TEXT)

    result = field.canonical(text)

    assert result == text


@pytest.mark.parametrize("text", ["x" * (MAX_TEXT_LENGTH + 1), "é" * 1000])
def test_text_over_the_limit_is_refused(text: str) -> None:
    field = field_of(FieldType.TEXT)

    with pytest.raises(
        InvalidValue,
        match=refused(
            FieldType.TEXT, text[:77] + "...", f"text of at most {MAX_TEXT_LENGTH} characters"
        ),
    ):
        field.canonical(text)


@pytest.mark.parametrize("text", ["a\x00b", "line\nbreak", "tab\there", "bell\x07", "del\x7f"])
def test_text_with_control_characters_is_refused(text: str) -> None:
    field = field_of(FieldType.TEXT)

    with pytest.raises(
        InvalidValue,
        match=refused(FieldType.TEXT, text, "printable text (it has control characters)"),
    ):
        field.canonical(text)


# --- the property: canonical text is a fixed point ---------------------------

_VALUE_LIKE = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEF \t\n", min_size=30, max_size=66),
    st.from_regex(r"-?[0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True),
    st.ip_addresses().map(lambda a: a.exploded.upper()),
    st.emails().map(str.upper),
    st.sampled_from([" true", "FALSE ", "True"]),
)


@settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ftype=st.sampled_from(FieldType), text=_VALUE_LIKE)
def test_canonical_text_is_a_fixed_point(ftype: FieldType, text: str) -> None:
    field = field_of(ftype)

    try:
        once = field.canonical(text)
    except InvalidValue:
        return

    assert field.canonical(once) == once


# --- query shapes -------------------------------------------------------------


def test_a_valid_query_comes_back_with_canonical_values() -> None:
    query = Query(
        dataset="media",
        operation=Operation.RECORDS,
        predicates=(
            Predicate("sha256", Comparator.IN, ("AB" * 32, " CD" + "cd" * 31)),
            Predicate("first_seen", Comparator.GTE, ("2024-01-05",)),
            eq("victim_identified", "TRUE"),
        ),
        fields=("category", "case_ref"),
        limit=MAX_LIMIT,
    )

    validated = validate_query(query, CATALOG_V1)

    assert validated.predicates == (
        Predicate("sha256", Comparator.IN, ("ab" * 32, "cd" * 32)),
        Predicate("first_seen", Comparator.GTE, ("2024-01-05",)),
        Predicate("victim_identified", Comparator.EQ, ("true",)),
    )
    assert validated.fields == ("category", "case_ref")
    assert validated.limit == MAX_LIMIT


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            Query("media", Operation.MATCH, predicates=(eq("sha256", SHA256),) * 33),
            f"a query takes at most {MAX_PREDICATES} predicates",
        ),
        (
            Query("media", Operation.RECORDS, predicates=(eq("sha256", SHA256),)),
            "a records query must select at least one field (--fields)",
        ),
        (
            Query("media", Operation.RECORDS, fields=("category", "category")),
            "a records query selects each field once",
        ),
        (
            Query("media", Operation.MATCH, (eq("sha256", SHA256),), fields=("category",)),
            "a match query selects no fields; use a records query",
        ),
        (
            Query("media", Operation.COUNT, fields=("category",)),
            "a count query selects no fields; use a records query",
        ),
        (
            Query("media", Operation.COUNT_BY),
            "a count_by query needs a field to group by",
        ),
        (
            Query("media", Operation.COUNT, group_by="category"),
            "only count_by groups; a count query has no group_by",
        ),
        (
            Query("media", Operation.MATCH, (eq("sha256", SHA256),), group_by="category"),
            "only count_by groups; a match query has no group_by",
        ),
        (
            Query("media", Operation.MATCH),
            "a match query needs at least one predicate to match on",
        ),
        (
            Query("media", Operation.COUNT, limit=-1),
            f"limit must be between 1 and {MAX_LIMIT} (0 for the default)",
        ),
        (
            Query("media", Operation.COUNT, limit=MAX_LIMIT + 1),
            f"limit must be between 1 and {MAX_LIMIT} (0 for the default)",
        ),
        (
            Query("media", Operation.MATCH, (Predicate("sha256", Comparator.IN, ()),)),
            f"'in' on 'sha256' takes 1 to {MAX_IN_VALUES} values, got 0",
        ),
        (
            Query(
                "media",
                Operation.MATCH,
                (Predicate("sha256", Comparator.IN, (SHA256,) * (MAX_IN_VALUES + 1)),),
            ),
            f"'in' on 'sha256' takes 1 to {MAX_IN_VALUES} values, got {MAX_IN_VALUES + 1}",
        ),
        (
            Query("media", Operation.MATCH, (Predicate("md5", Comparator.EQ, (MD5, MD5)),)),
            "'eq' on 'md5' takes exactly one value, got 2",
        ),
        (
            Query("media", Operation.COUNT, (Predicate("first_seen", Comparator.LTE, ()),)),
            "'lte' on 'first_seen' takes exactly one value, got 0",
        ),
        (
            Query("media", Operation.COUNT, (Predicate("category", Comparator.GTE, ("A",)),)),
            "'category' is text; ranges work only on dates and numbers",
        ),
        (
            Query("media", Operation.COUNT, (Predicate("sha256", Comparator.LTE, (SHA256,)),)),
            "'sha256' is hex256; ranges work only on dates and numbers",
        ),
        (
            Query(
                "media",
                Operation.COUNT,
                (Predicate("victim_identified", Comparator.GTE, ("true",)),),
            ),
            "'victim_identified' is bool; ranges work only on dates and numbers",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_queries_of_the_wrong_shape_are_refused(query: Query, message: str) -> None:
    with pytest.raises(InvalidQuery, match=re.escape(message)):
        validate_query(query, CATALOG_V1)


_MEDIA_FIELDS = "sha256, md5, pdq, pdq_distance, category, first_seen, case_ref, victim_identified"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            Query("images", Operation.COUNT),
            "unknown dataset 'images'; the catalog has: media, accounts, cases",
        ),
        (
            Query("media", Operation.MATCH, (eq("colour", "red"),)),
            f"dataset 'media' has no field 'colour'; its fields are: {_MEDIA_FIELDS}",
        ),
        (
            Query("media", Operation.RECORDS, fields=("category", "imagery")),
            f"dataset 'media' has no field 'imagery'; its fields are: {_MEDIA_FIELDS}",
        ),
        (
            Query("media", Operation.COUNT_BY, group_by="email"),
            f"dataset 'media' has no field 'email'; its fields are: {_MEDIA_FIELDS}",
        ),
    ],
)
def test_names_the_catalog_lacks_are_refused(query: Query, message: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)) as caught:
        validate_query(query, CATALOG_V1)

    assert type(caught.value) is CatalogError


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        (eq("sha256", "nothex"), "field 'sha256': 'nothex' is not 64 hexadecimal digits"),
        (
            Predicate("first_seen", Comparator.GTE, ("2024-13-40",)),
            "field 'first_seen': '2024-13-40' is not a valid calendar date (YYYY-MM-DD)",
        ),
        (
            Predicate("md5", Comparator.IN, (MD5, "xyz")),
            "field 'md5': 'xyz' is not 32 hexadecimal digits",
        ),
    ],
)
def test_values_that_do_not_parse_are_refused_by_validate_query(
    predicate: Predicate, message: str
) -> None:
    query = Query("media", Operation.COUNT, (predicate,))

    with pytest.raises(InvalidValue, match=re.escape(message)):
        validate_query(query, CATALOG_V1)


# --- case references ----------------------------------------------------------


def test_case_references_are_trimmed() -> None:
    result = validate_case_ref("  GEN-2026-0142 \n")

    assert result == "GEN-2026-0142"


@pytest.mark.parametrize("case_ref", ["", "   ", "\t\n"])
def test_a_blank_case_reference_is_refused(case_ref: str) -> None:
    with pytest.raises(InvalidQuery, match=re.escape("a case reference is required (--case-ref)")):
        validate_case_ref(case_ref)


@pytest.mark.parametrize(
    "case_ref",
    ["X" * (MAX_CASE_REF_LENGTH + 1), "GEN\x00-1", "GEN\n-1", "GEN-1\x1b[2J", "GEN-1\x7f"],
)
def test_an_overlong_or_unprintable_case_reference_is_refused(case_ref: str) -> None:
    with pytest.raises(
        InvalidQuery,
        match=re.escape(
            f"case reference must be printable and at most {MAX_CASE_REF_LENGTH} characters"
        ),
    ):
        validate_case_ref(case_ref)
