"""Signed checkpoints (C2SP tlog-checkpoint in a C2SP signed note), with real Ed25519 keys.

The Go vectors are verbatim from golang.org/x/mod/sumdb/note (note_test.go):
reproducing and verifying them shows that Go tooling and we agree on the
signed bytes, the key hash and the signature line.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from liaison.errors import CheckpointError, LedgerError
from liaison.keys import SigningKey, VerifyingKey
from liaison.ledger.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    SignedCheckpoint,
    _open_note,
    _sign_note,
    check_origin,
    key_hash,
    open_checkpoint,
    parse_unverified,
    sign_checkpoint,
    verifier_key_string,
)

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqf"
    "qdngotpRZb6KE6RyyBwJnAM=\n"
)

# The root of the example in c2sp.org/tlog-checkpoint.
EXAMPLE_ROOT_B64 = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="

# A checkpoint note as this release writes it, signed with the Go example key
# (Ed25519 is deterministic). Notes must stay verifiable for years: if this
# test fails, the format changed and old checkpoints would no longer open.
PINNED_NOTE = (
    "liaison.example/ledger\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "liaison-time 1700000000123\n"
    "\n"
    "— liaison.example/ledger 2SsqjjzTZpHk4YlGtTirwMCzpaop6QohdXj26RxaUN+ZYp5ZsxcQtt4pa4TPlhS2/Xhz"
    "yYcSOwSm3b/QVYURHk4IDw4=\n"
)

ORIGIN = "police.example/liaison-ledger"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def checkpoint() -> Checkpoint:
    return Checkpoint(
        origin=ORIGIN,
        size=1234,
        root=hashlib.sha256(b"some tree").digest(),
        time_ms=1_700_000_000_000,
    )


def go_verifying_key() -> VerifyingKey:
    _name, _hash, material = GO_VKEY.split("+", 2)
    decoded = base64.b64decode(material)
    assert decoded[0] == 0x01  # Ed25519
    return VerifyingKey.from_public_key(Ed25519PublicKey.from_public_bytes(decoded[1:]))


def go_signing_key() -> SigningKey:
    # The key material itself contains a '+'; split off the four fields before it.
    decoded = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert decoded[0] == 0x01  # Ed25519
    private = Ed25519PrivateKey.from_private_bytes(decoded[1:])
    return SigningKey(private, VerifyingKey.from_public_key(private.public_key()))


def replace_line(note: str, index: int, line: str) -> str:
    lines = note.split("\n")
    lines[index] = line
    return "\n".join(lines)


def signature_blob(note: str) -> bytes:
    return base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])


def with_signature_blob(note: str, blob: bytes) -> str:
    head = note.rstrip("\n").rsplit(" ", 1)[0]
    return f"{head} {base64.b64encode(blob).decode()}\n"


def sig_line(note: str) -> str:
    """The signature line(s) of a note, each with its newline."""
    return note[note.rindex("\n\n") + 2 :]


def flip_bit(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- the Go reference vector -----------------------------------------------------


def test_go_vector_verifies() -> None:
    # prepare
    verifying_key = go_verifying_key()

    # execute
    text = _open_note(GO_NOTE, verifying_key, "PeterNeumann")

    # assert
    assert text == GO_TEXT


def test_go_vector_key_hash_and_verifier_key_string() -> None:
    # prepare
    verifying_key = go_verifying_key()

    # execute
    hash_ = key_hash("PeterNeumann", verifying_key)
    vkey = verifier_key_string("PeterNeumann", verifying_key)

    # assert
    assert hash_ == bytes.fromhex("c74f20a3")
    assert vkey == GO_VKEY


def test_go_signer_reproduces_the_vector_byte_for_byte() -> None:
    # prepare
    signing_key = go_signing_key()

    # execute
    note = _sign_note(signing_key, "PeterNeumann", GO_TEXT)

    # assert
    assert signing_key.verifying_key.public_key == go_verifying_key().public_key
    assert note == GO_NOTE


def test_go_vector_with_altered_text_does_not_verify() -> None:
    # prepare
    tampered = GO_NOTE.replace("cryptography", "cryptographY")

    # execute / assert
    with pytest.raises(CheckpointError, match=r"PeterNeumann\+c74f20a3 does not verify"):
        _open_note(tampered, go_verifying_key(), "PeterNeumann")


# --- format -------------------------------------------------------------------------


def test_body_is_exactly_the_c2sp_checkpoint_with_the_time_extension() -> None:
    # prepare
    checkpoint = Checkpoint(
        origin="liaison.example/ledger",
        size=20852163,
        root=base64.b64decode(EXAMPLE_ROOT_B64),
        time_ms=1700000000123,
    )

    # execute
    body = checkpoint.body()

    # assert
    assert body == (
        "liaison.example/ledger\n"
        "20852163\n"
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        "liaison-time 1700000000123\n"
    )


def test_body_of_the_empty_tree() -> None:
    # prepare: RFC 9162's empty tree hash is SHA-256 of the empty string
    checkpoint = Checkpoint(
        origin="a.example/log", size=0, root=hashlib.sha256().digest(), time_ms=0
    )

    # execute
    body = checkpoint.body()

    # assert
    assert body == (
        "a.example/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\nliaison-time 0\n"
    )


def test_pinned_note_still_opens() -> None:
    # prepare
    verifying_key = go_signing_key().verifying_key

    # execute
    opened = open_checkpoint(PINNED_NOTE, verifying_key, origin="liaison.example/ledger")

    # assert
    assert opened == Checkpoint(
        origin="liaison.example/ledger",
        size=20852163,
        root=base64.b64decode(EXAMPLE_ROOT_B64),
        time_ms=1700000000123,
    )
    assert sign_checkpoint(go_signing_key(), opened).note == PINNED_NOTE
    assert verifier_key_string("liaison.example/ledger", verifying_key) == (
        "liaison.example/ledger+d92b2a8e+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    )


def test_signed_note_is_body_blank_line_and_one_signature_line(
    key: SigningKey, checkpoint: Checkpoint
) -> None:
    # execute
    signed = sign_checkpoint(key, checkpoint)

    # assert
    body, signatures = signed.note.split("\n\n")
    assert body + "\n" == checkpoint.body()
    assert re.fullmatch(rf"— {re.escape(ORIGIN)} [A-Za-z0-9+/]{{91}}=\n", signatures)
    blob = signature_blob(signed.note)
    assert blob[:4] == key_hash(ORIGIN, key.verifying_key)
    key.verifying_key.verify(blob[4:], checkpoint.body().encode())
    assert signed.checkpoint == checkpoint


# --- round trip -------------------------------------------------------------------


def test_round_trip(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    signed = sign_checkpoint(key, checkpoint)

    # execute
    opened = open_checkpoint(signed.note, key.verifying_key)
    opened_for_origin = open_checkpoint(signed.note, key.verifying_key, origin=ORIGIN)

    # assert
    assert opened == checkpoint
    assert opened_for_origin == checkpoint


def test_round_trip_at_the_largest_size_and_time(key: SigningKey) -> None:
    # prepare
    checkpoint = Checkpoint(origin=ORIGIN, size=2**63 - 1, root=b"\xff" * 32, time_ms=2**63 - 1)

    # execute
    opened = open_checkpoint(sign_checkpoint(key, checkpoint).note, key.verifying_key)

    # assert
    assert opened == checkpoint


def test_parse_unverified_reads_a_note_without_checking_signatures(
    other_key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare
    note = sign_checkpoint(other_key, checkpoint).note

    # execute
    parsed = parse_unverified(note)

    # assert
    assert parsed == checkpoint


def test_errors_are_ledger_errors(key: SigningKey, checkpoint: Checkpoint) -> None:
    # execute / assert
    with pytest.raises(LedgerError):
        open_checkpoint("not a note", key.verifying_key)


# --- tampering ------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 3, 4, 40, 67])
def test_flipped_bit_in_key_hash_or_signature_is_rejected(
    key: SigningKey, checkpoint: Checkpoint, index: int
) -> None:
    # prepare: bytes 0-3 are the key hash, 4-67 the signature
    note = sign_checkpoint(key, checkpoint).note
    tampered = with_signature_blob(note, flip_bit(signature_blob(note), index))

    # execute / assert
    expected = "does not verify" if index >= 4 else "no signature by key"
    with pytest.raises(CheckpointError, match=expected):
        open_checkpoint(tampered, key.verifying_key)


def test_flipped_bit_in_root_is_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note
    root = base64.b64encode(flip_bit(checkpoint.root, 31)).decode()
    tampered = replace_line(note, 2, root)

    # execute / assert
    assert parse_unverified(tampered).root != checkpoint.root
    with pytest.raises(CheckpointError, match="does not verify: the note was altered"):
        open_checkpoint(tampered, key.verifying_key)


@pytest.mark.parametrize(
    ("index", "line"),
    [(1, "1235"), (1, "123"), (3, "liaison-time 1700000000001"), (3, "liaison-time 0")],
)
def test_changed_size_or_time_is_rejected(
    key: SigningKey, checkpoint: Checkpoint, index: int, line: str
) -> None:
    # prepare
    tampered = replace_line(sign_checkpoint(key, checkpoint).note, index, line)

    # execute / assert
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(tampered, key.verifying_key)


def test_changed_origin_is_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare: the signature line still names the old origin
    note = sign_checkpoint(key, checkpoint).note
    tampered = replace_line(note, 0, "police.example/liaison-ledgeR")

    # execute / assert
    with pytest.raises(
        CheckpointError, match=r"no signature by key police\.example/liaison-ledgeR\+"
    ):
        open_checkpoint(tampered, key.verifying_key)


def test_changed_origin_and_signature_name_is_rejected(
    key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare: both renamed, so the key hash no longer matches the name
    note = sign_checkpoint(key, checkpoint).note
    tampered = note.replace(ORIGIN, "police.example/other-ledger")

    # execute / assert
    with pytest.raises(CheckpointError, match="no signature by key"):
        open_checkpoint(tampered, key.verifying_key)


def test_signature_by_another_key_is_rejected(
    key: SigningKey, other_key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare
    note = sign_checkpoint(other_key, checkpoint).note
    other_label = f"{ORIGIN}+{key_hash(ORIGIN, other_key.verifying_key).hex()}"

    # execute / assert
    with pytest.raises(CheckpointError, match=rf"it is signed by {re.escape(other_label)}\."):
        open_checkpoint(note, key.verifying_key)


def test_signature_by_the_same_key_under_another_name_is_rejected(
    key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare: a valid signature over this body, but under key name != origin
    note = _sign_note(key, "police.example/other-ledger", checkpoint.body())

    # execute / assert
    with pytest.raises(
        CheckpointError, match=r"no signature by key police\.example/liaison-ledger\+"
    ):
        open_checkpoint(note, key.verifying_key)


def test_same_key_for_another_log_is_caught_by_the_origin(key: SigningKey) -> None:
    # prepare: one operator key signs two logs
    other_log = Checkpoint(origin="police.example/other", size=1, root=b"\x00" * 32, time_ms=1)
    note = sign_checkpoint(key, other_log).note

    # execute / assert: the key alone accepts it, the origin does not
    assert open_checkpoint(note, key.verifying_key) == other_log
    with pytest.raises(
        CheckpointError,
        match=r"from log 'police.example/other', expected 'police.example/liaison-ledger'",
    ):
        open_checkpoint(note, key.verifying_key, origin=ORIGIN)


def test_wrong_origin_names_both(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note

    # execute / assert
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint is from log 'police\.example/liaison-ledger', "
        r"expected 'police\.example/ledger'",
    ):
        open_checkpoint(note, key.verifying_key, origin="police.example/ledger")


def test_note_without_signature_line_is_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note
    stripped = note.removesuffix(sig_line(note))

    # execute / assert
    with pytest.raises(CheckpointError, match="no signature lines"):
        open_checkpoint(stripped, key.verifying_key)
    with pytest.raises(CheckpointError, match="no empty line"):
        open_checkpoint(checkpoint.body(), key.verifying_key)


def test_signatures_by_unknown_keys_are_ignored(
    key: SigningKey, other_key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare: witness cosignatures before and after the log's own, plus a
    # signature by another key that shares the log's name (but not its hash)
    ours = sig_line(sign_checkpoint(key, checkpoint).note)
    witness = sig_line(_sign_note(other_key, "witness.example/w1", checkpoint.body()))
    impostor = sig_line(sign_checkpoint(other_key, checkpoint).note)
    note = checkpoint.body() + "\n" + witness + impostor + ours + witness

    # execute
    opened = open_checkpoint(note, key.verifying_key)

    # assert
    assert opened == checkpoint


def test_only_unknown_signatures_are_not_enough(
    key: SigningKey, other_key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare
    witness = sig_line(_sign_note(other_key, "witness.example/w1", checkpoint.body()))
    impostor = sig_line(sign_checkpoint(other_key, checkpoint).note)
    note = checkpoint.body() + "\n" + witness + impostor

    # execute / assert
    with pytest.raises(CheckpointError, match=r"it is signed by witness\.example/w1\+"):
        open_checkpoint(note, key.verifying_key)


def test_a_bad_signature_by_the_key_rejects_the_note_even_beside_a_good_one(
    key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare
    good = sign_checkpoint(key, checkpoint).note
    bad = with_signature_blob(good, flip_bit(signature_blob(good), 10))
    note = good + sig_line(bad)

    # execute / assert
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(note, key.verifying_key)


def test_truncated_signature_by_the_key_is_rejected(
    key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note
    tampered = with_signature_blob(note, signature_blob(note)[:-1])

    # execute / assert
    with pytest.raises(CheckpointError, match="does not verify"):
        open_checkpoint(tampered, key.verifying_key)


# --- malformed notes -------------------------------------------------------------------


def signed_text(key: SigningKey, text: str, name: str = ORIGIN) -> str:
    """A note with a valid signature over ``text``: only parsing can reject it."""
    return _sign_note(key, name, text)


BODY_TAIL = f"{EXAMPLE_ROOT_B64}\nliaison-time 5\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param(f"{ORIGIN}\n-1\n{BODY_TAIL}", r"tree size is '-1'", id="size -1"),
        pytest.param(f"{ORIGIN}\n01\n{BODY_TAIL}", r"tree size is '01'", id="size 01"),
        pytest.param(f"{ORIGIN}\n1e3\n{BODY_TAIL}", r"tree size is '1e3'", id="size 1e3"),
        pytest.param(f"{ORIGIN}\n+1\n{BODY_TAIL}", r"tree size is '\+1'", id="size +1"),
        pytest.param(f"{ORIGIN}\n 1\n{BODY_TAIL}", r"tree size is ' 1'", id="size space"),
        pytest.param(f"{ORIGIN}\n1_000\n{BODY_TAIL}", r"tree size is '1_000'", id="size 1_000"),
        pytest.param(f"{ORIGIN}\n\u0661\n{BODY_TAIL}", r"tree size is", id="size arabic digit"),
        pytest.param(f"{ORIGIN}\n\n{BODY_TAIL}", r"tree size is ''", id="size empty"),
        pytest.param(
            f"{ORIGIN}\n{2**63}\n{BODY_TAIL}", r"tree size is '9223372036854775808'", id="size 2^63"
        ),
        pytest.param(
            f"{ORIGIN}\n1\n!!!notbase64!!!\nliaison-time 5\n", "is not base64", id="root not b64"
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{base64.b64encode(bytes(31)).decode()}\nliaison-time 5\n",
            "decodes to 31 bytes",
            id="root 31 bytes",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{base64.b64encode(bytes(33)).decode()}\nliaison-time 5\n",
            "decodes to 33 bytes",
            id="root 33 bytes",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64[:-2]}J=\nliaison-time 5\n",
            "is not canonical",
            id="root non-canonical",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64.rstrip('=')}\nliaison-time 5\n",
            "is not base64",
            id="root unpadded",
        ),
        pytest.param(f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64}\n", "0 'liaison-time' lines", id="no time"),
        pytest.param(
            f"{ORIGIN}\n1\n{BODY_TAIL}liaison-time 5\n",
            "2 'liaison-time' lines",
            id="duplicate time",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64}\nliaison-time soon\n",
            "liaison-time is 'soon'",
            id="time not numeric",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64}\nliaison-time\n",
            "liaison-time is ''",
            id="time without value",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64}\nliaison-time -5\n",
            "liaison-time is '-5'",
            id="time negative",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{BODY_TAIL}witness-time 5\n",
            "unknown extension line 'witness-time 5'",
            id="unknown extension after",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64}\nx\nliaison-time 5\n",
            "unknown extension line 'x'",
            id="unknown extension before",
        ),
        pytest.param(
            f"{ORIGIN}\n1\n{EXAMPLE_ROOT_B64}\n\nliaison-time 5\n",
            "empty line after the root hash",
            id="empty extension line",
        ),
        pytest.param(f"{ORIGIN}\n1\n", "has 2 lines", id="too few lines"),
        pytest.param(f"DSSEv1x\n1\n{BODY_TAIL}", "starts with 'DSSEv1'", id="DSSE origin"),
        pytest.param(f"a+b\n1\n{BODY_TAIL}", "contains '\\+'", id="origin with plus"),
    ],
)
def test_malformed_checkpoint_text_is_rejected(key: SigningKey, text: str, match: str) -> None:
    # prepare: correctly signed, so only parsing can reject it
    name = "a.example" if text.startswith(("DSSEv1", "a+b")) else ORIGIN
    note = signed_text(key, text, name)

    # execute / assert
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(note, key.verifying_key)
    with pytest.raises(CheckpointError, match=match):
        parse_unverified(note)


def test_missing_blank_line_is_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note.replace("\n\n", "\n")

    # execute / assert
    with pytest.raises(CheckpointError, match="no empty line between its text and its signatures"):
        open_checkpoint(note, key.verifying_key)


def test_crlf_line_endings_are_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note.replace("\n", "\r\n")

    # execute / assert
    with pytest.raises(CheckpointError, match=r"U\+000D.*convert CRLF line endings to LF"):
        open_checkpoint(note, key.verifying_key)


@pytest.mark.parametrize(
    ("suffix", "match"),
    [
        ("garbage", "without a final newline"),
        ("garbage\n", "does not start with an em dash"),
        ("\n", "no signature lines"),
        ("— \n", "key name ''"),
        ("— name\n", "decodes to 0 bytes"),
        ("— name AAAA\n", "decodes to 3 bytes"),
        ("— name !!!!\n", "not standard base64"),
        ("— na+me AAAAAAAA\n", "key name 'na\\+me'"),
        ("- name AAAAAAAA\n", "does not start with an em dash"),
        ("—name AAAAAAAA\n", "does not start with an em dash"),
        ("\x00", "U\\+0000"),
    ],
)
def test_trailing_garbage_is_rejected(
    key: SigningKey, checkpoint: Checkpoint, suffix: str, match: str
) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note + suffix

    # execute / assert
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(note, key.verifying_key)


def test_huge_note_is_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare: padded with an unknown signature line to exactly the limit, then one byte more
    note = sign_checkpoint(key, checkpoint).note
    fixed = len(note.encode()) + len("— ".encode()) + len(" AAAAAAAA\n")
    at_limit = note + "— " + "w" * (MAX_NOTE_BYTES - fixed) + " AAAAAAAA\n"
    over_limit = note + "— " + "w" * (MAX_NOTE_BYTES - fixed + 1) + " AAAAAAAA\n"

    # execute
    opened = open_checkpoint(at_limit, key.verifying_key)

    # assert
    assert len(at_limit.encode()) == MAX_NOTE_BYTES
    assert opened == checkpoint
    with pytest.raises(CheckpointError, match=r"note is 16385 bytes, above the 16384-byte limit"):
        open_checkpoint(over_limit, key.verifying_key)
    with pytest.raises(CheckpointError, match=r"over 16384 bytes \(1000\d+ characters\)"):
        open_checkpoint(note + "x" * 1_000_000, key.verifying_key)


def test_multibyte_characters_count_as_bytes(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare: under the limit in characters, over it in UTF-8 bytes
    note = sign_checkpoint(key, checkpoint).note + "— w " + "é" * 8200 + "\n"

    # execute / assert
    assert len(note) < MAX_NOTE_BYTES < len(note.encode())
    with pytest.raises(CheckpointError, match="above the 16384-byte limit"):
        open_checkpoint(note, key.verifying_key)


def test_too_many_signature_lines_are_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note + "— w AAAAAAAA\n" * 100

    # execute / assert
    with pytest.raises(CheckpointError, match="101 signature lines, above the limit of 100"):
        open_checkpoint(note, key.verifying_key)


def test_lone_surrogate_is_rejected(key: SigningKey, checkpoint: Checkpoint) -> None:
    # prepare
    note = sign_checkpoint(key, checkpoint).note + "— w \udc80\n"

    # execute / assert
    with pytest.raises(CheckpointError, match="not valid Unicode"):
        open_checkpoint(note, key.verifying_key)


# --- origins and construction --------------------------------------------------------------


@pytest.mark.parametrize("origin", ["example.com/log42", "PeterNeumann", "a", "x.example/DSSEv1"])
def test_valid_origins(origin: str) -> None:
    # execute / assert
    assert check_origin(origin) == origin


@pytest.mark.parametrize(
    ("origin", "match"),
    [
        ("a b", "has a space at position 1"),
        ("a\nb", r"'\\n' \(U\+000A\) at position 1"),
        ("a\tb", r"U\+0009"),
        ("", "origin is empty"),
        ("DSSEv1 x", "a space at position 6"),
        ("DSSEv1", "starts with 'DSSEv1'"),
        ("DSSEv1/log", "starts with 'DSSEv1'"),
        ("lög.example", r"U\+00F6"),
        ("a\u00a0b", r"U\+00A0"),
        ("a\x7fb", r"U\+007F"),
        ("example.com+log", "contains '\\+'"),
    ],
)
def test_invalid_origins(origin: str, match: str) -> None:
    # execute / assert
    with pytest.raises(CheckpointError, match=match):
        check_origin(origin)
    with pytest.raises(CheckpointError, match=match):
        Checkpoint(origin=origin, size=0, root=bytes(32), time_ms=0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"root": bytes(31)}, "root hash is 31 bytes, expected 32"),
        ({"root": "00" * 32}, "root hash is str, expected 32 bytes"),
        ({"size": -1}, "tree size is -1"),
        ({"size": 2**63}, "tree size is 9223372036854775808"),
        ({"size": True}, "tree size is True"),
        ({"time_ms": 1.5}, "time_ms is 1.5"),
    ],
)
def test_checkpoint_rejects_invalid_fields(changes: dict[str, object], match: str) -> None:
    # prepare
    fields: dict[str, object] = {"origin": ORIGIN, "size": 1, "root": bytes(32), "time_ms": 1}
    fields.update(changes)

    # execute / assert
    with pytest.raises(CheckpointError, match=match):
        Checkpoint(**fields)  # type: ignore[arg-type]  # deliberately ill-typed fields


def test_signed_checkpoint_must_hold_its_checkpoint(
    key: SigningKey, checkpoint: Checkpoint
) -> None:
    # prepare
    other = Checkpoint(origin=ORIGIN, size=checkpoint.size + 1, root=checkpoint.root, time_ms=1)
    note = sign_checkpoint(key, checkpoint).note

    # execute / assert
    with pytest.raises(CheckpointError, match="does not hold this checkpoint's text"):
        SignedCheckpoint(checkpoint=other, note=note)


def test_origin_too_long_to_verify_cannot_be_signed(key: SigningKey) -> None:
    # prepare: the origin appears twice, in the text and as the key name
    checkpoint = Checkpoint(origin="o" * 8200, size=0, root=bytes(32), time_ms=0)

    # execute / assert
    with pytest.raises(CheckpointError, match="use a shorter origin"):
        sign_checkpoint(key, checkpoint)


def test_verifier_key_string_of_a_generated_key(key: SigningKey) -> None:
    # execute
    vkey = verifier_key_string(ORIGIN, key.verifying_key)

    # assert
    name, hash_hex, material = vkey.split("+", 2)
    assert name == ORIGIN
    assert bytes.fromhex(hash_hex) == key_hash(ORIGIN, key.verifying_key)
    assert len(hash_hex) == 8
    assert base64.b64decode(material) == b"\x01" + key.verifying_key.public_key.public_bytes_raw()


def test_key_hash_depends_on_name_and_key(key: SigningKey, other_key: SigningKey) -> None:
    # execute
    hashes = {
        key_hash(ORIGIN, key.verifying_key),
        key_hash(ORIGIN + "2", key.verifying_key),
        key_hash(ORIGIN, other_key.verifying_key),
    }

    # assert
    assert len(hashes) == 3
    assert all(len(h) == 4 for h in hashes)
    with pytest.raises(CheckpointError, match="key name 'a b'"):
        key_hash("a b", key.verifying_key)
