"""Signed checkpoints: the ledger's tree heads as C2SP signed notes.

A checkpoint (https://c2sp.org/tlog-checkpoint) commits to the Merkle tree of
the log at one size. Its text is exactly::

    <origin>
    <tree size, decimal>
    <root hash, standard base64>
    liaison-time <milliseconds since the epoch when it was signed>

each line ending in a newline. The one extension line, ``liaison-time``, lets
auditors see gaps: the log signs a checkpoint at a fixed interval even when
no entry was added.

The text is signed as a signed note (https://c2sp.org/signed-note, as
implemented by golang.org/x/mod/sumdb/note): the text, an empty line, then one
line per signature, ``— <key name> <base64(key hash || Ed25519 signature)>``.
The key name is the log's origin and the key hash is the first four bytes of
``SHA-256(name || "\\n" || 0x01 || public key)``, so standard transparency
tooling (witnesses, monitors, ``note.Open``) reads our checkpoints given
:func:`verifier_key_string` of the log's key.

A checkpoint's content comes back only from :func:`open_checkpoint`, after the
signature checks out; :func:`parse_unverified` exists for display and says so
in its name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from liaison.errors import BadSignature, CheckpointError
from liaison.keys import SigningKey, VerifyingKey

TIME_EXTENSION = "liaison-time"

# A checkpoint with one signature is about 200 bytes plus twice the origin;
# the cap keeps a hostile note from making a verifier scan megabytes.
MAX_NOTE_BYTES = 16 * 1024
# The limit golang.org/x/mod/sumdb/note applies; signed-note asks for >= 16.
MAX_SIGNATURES = 100

# Tree sizes and times are stored as signed 64-bit integers.
MAX_INTEGER = 2**63 - 1

_SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE
_ALG_ED25519 = b"\x01"
_KEY_HASH_BYTES = 4
_ROOT_BYTES = 32
_CANONICAL_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
# Control characters but newline: none may appear in a note.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")
# What a key name may not hold: Unicode whitespace (str.isspace), controls, '+'.
_NOT_IN_KEY_NAME = re.compile(r"[\s\x00-\x1f+]")

# An Ed25519 log key may also sign DSSE envelopes (liaison.envelope), whose
# signed bytes are the pre-authentication encoding "DSSEv1 <len> <type> ...".
# A checkpoint's signed text starts with its origin, so forbidding origins that
# start with "DSSEv1" keeps the two signature domains apart: no checkpoint text
# is ever a valid PAE, and no PAE ever parses as a checkpoint.
_DSSE_PREFIX = "DSSEv1"


# key_hash() of the few (log, key) pairs a process meets; bounded all the same.
_MAX_KEY_HASHES = 256
_key_hashes: dict[tuple[str, str], bytes] = {}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: the log ``origin`` had ``size`` leaves with ``root`` at ``time_ms``."""

    origin: str
    size: int
    root: bytes
    time_ms: int

    def __post_init__(self) -> None:
        check_origin(self.origin)
        _check_integer(self.size, "tree size")
        _check_integer(self.time_ms, "time_ms")
        if not isinstance(self.root, bytes) or len(self.root) != _ROOT_BYTES:
            found = (
                f"{len(self.root)} bytes"
                if isinstance(self.root, bytes)
                else type(self.root).__name__
            )
            raise CheckpointError(
                f"checkpoint root hash is {found}, expected {_ROOT_BYTES} bytes "
                "(an RFC 9162 SHA-256 tree hash)"
            )

    def body(self) -> str:
        """The exact note text that is signed, ending in a newline."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\n{TIME_EXTENSION} {self.time_ms}\n"


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint with its signed note (text, empty line, signature lines)."""

    checkpoint: Checkpoint
    note: str

    def __post_init__(self) -> None:
        if not self.note.startswith(self.checkpoint.body() + "\n"):
            raise CheckpointError(
                "signed note does not hold this checkpoint's text followed by an empty line; "
                "build SignedCheckpoint with sign_checkpoint() or from open_checkpoint()"
            )


@dataclass(frozen=True, slots=True)
class _SignatureLine:
    name: str
    key_hash: bytes
    signature: bytes


def check_origin(origin: str) -> str:
    """Return ``origin`` if it can name a log (and its key), else raise CheckpointError.

    An origin is one line of printable ASCII without spaces, not empty, without
    ``+`` (it is the signed-note key name, and verifier key strings use ``+`` as
    separator) and not starting with "DSSEv1" (see ``_DSSE_PREFIX``).
    """
    example = "use something like 'police.example/liaison-ledger'"
    if not isinstance(origin, str):
        raise CheckpointError(f"origin is a {type(origin).__name__}, expected a str; {example}")
    if not origin:
        raise CheckpointError(f"origin is empty; {example}")
    for position, char in enumerate(origin):
        if not "!" <= char <= "~":
            raise CheckpointError(
                f"origin {_show(origin)} has {_describe(char)} at position {position}, "
                f"expected printable ASCII without spaces; {example}"
            )
    if "+" in origin:
        raise CheckpointError(
            f"origin {_show(origin)} contains '+', which a signed-note key name (the origin) "
            f"may not contain; {example}"
        )
    if origin.startswith(_DSSE_PREFIX):
        raise CheckpointError(
            f"origin {_show(origin)} starts with {_DSSE_PREFIX!r}, which is reserved so that "
            f"checkpoint signatures can never be taken for DSSE envelope signatures; {example}"
        )
    return origin


def key_hash(name: str, key: VerifyingKey) -> bytes:
    """The signed-note key hash: SHA-256(name || "\\n" || 0x01 || raw public key)[:4]."""
    _check_key_name(name)
    # The key id is a hash of the public key: the pair names one key hash.
    found = _key_hashes.get((name, key.key_id))
    if found is None:
        raw = key.public_key.public_bytes_raw()
        found = hashlib.sha256(name.encode("utf-8") + b"\n" + _ALG_ED25519 + raw).digest()
        found = found[:_KEY_HASH_BYTES]
        if len(_key_hashes) < _MAX_KEY_HASHES:
            _key_hashes[(name, key.key_id)] = found
    return found


def verifier_key_string(name: str, key: VerifyingKey) -> str:
    """The Go note verifier key ``name+<hex key hash>+<base64(0x01 || public key)>``.

    This is what witnesses and ``note.NewVerifier`` are configured with.
    """
    material = base64.b64encode(_ALG_ED25519 + key.public_key.public_bytes_raw()).decode("ascii")
    return f"{name}+{key_hash(name, key).hex()}+{material}"


def sign_checkpoint(key: SigningKey, checkpoint: Checkpoint) -> SignedCheckpoint:
    """Sign ``checkpoint`` with the log's key, under the key name ``checkpoint.origin``."""
    note = _sign_note(key, checkpoint.origin, checkpoint.body())
    return SignedCheckpoint(checkpoint=checkpoint, note=note)


def open_checkpoint(note: str, key: VerifyingKey, *, origin: str | None = None) -> Checkpoint:
    """Return the checkpoint in ``note`` if ``key`` signed it as its origin's key.

    The key alone authenticates the operator, not the log: when one key signs
    for several logs, pass ``origin`` to accept only checkpoints of that log.
    Signatures by other keys (witnesses, a rotated key) are ignored, but a
    signature that claims to be by ``key`` and does not verify rejects the note.
    Raises CheckpointError if the note is malformed, from another log, or not
    signed by ``key``.
    """
    text, signatures = _split_note(note)
    checkpoint = _parse_body(text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(
            f"checkpoint is from log {_show(checkpoint.origin)}, expected {_show(origin)}; "
            "check that you fetched it from the right log"
        )
    _verify(text, signatures, key, checkpoint.origin)
    return checkpoint


def parse_unverified(note: str) -> Checkpoint:
    """Parse a signed checkpoint WITHOUT checking any signature: for display only.

    Nothing in the result can be trusted; use :func:`open_checkpoint` to rely on it.
    """
    text, _ = _split_note(note)
    return _parse_body(text)


# --- the signed-note layer ----------------------------------------------------


def _sign_note(key: SigningKey, name: str, text: str) -> str:
    """Sign ``text`` as a one-signature signed note under key name ``name``."""
    if not text.endswith("\n"):
        raise CheckpointError("note text must end in a newline")
    signature = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_hash(name, key.verifying_key) + signature).decode("ascii")
    note = f"{text}\n{_SIGNATURE_PREFIX}{name} {blob}\n"
    size = len(note.encode("utf-8"))
    if size > MAX_NOTE_BYTES:
        raise CheckpointError(
            f"signed note would be {size} bytes, above the {MAX_NOTE_BYTES}-byte limit that "
            "verifiers enforce; use a shorter origin"
        )
    return note


def _open_note(note: str, key: VerifyingKey, name: str) -> str:
    """Return the text of ``note`` if ``key`` signed it under ``name``."""
    text, signatures = _split_note(note)
    _verify(text, signatures, key, name)
    return text


def _split_note(note: str) -> tuple[str, list[_SignatureLine]]:
    """Split a signed note into its text and parsed signature lines (unverified)."""
    if not isinstance(note, str):
        raise CheckpointError(f"note is a {type(note).__name__}, expected a str")
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointError(
            f"note is over {MAX_NOTE_BYTES} bytes ({len(note)} characters); "
            "a Liaison checkpoint is a few hundred bytes, so this is not one"
        )
    try:
        size = len(note.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise CheckpointError(
            f"note is not valid Unicode (lone surrogate at position {exc.start})"
        ) from exc
    if size > MAX_NOTE_BYTES:
        raise CheckpointError(
            f"note is {size} bytes, above the {MAX_NOTE_BYTES}-byte limit; "
            "a Liaison checkpoint is a few hundred bytes, so this is not one"
        )
    control = _CONTROL.search(note)
    if control is not None:
        char, position = control.group(), control.start()
        hint = " (convert CRLF line endings to LF)" if char == "\r" else ""
        raise CheckpointError(
            f"note has {_describe(char)} at position {position}; signed notes allow no "
            f"control characters but newline{hint}"
        )
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError(
            "note has no empty line between its text and its signatures; expected the "
            "checkpoint text, an empty line, then lines '— <key name> <signature>'"
        )
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise CheckpointError(
            "note has no signature lines after its last empty line; expected lines "
            "'— <key name> <signature>' (was the signature cut off?)"
        )
    if not block.endswith("\n"):
        raise CheckpointError(
            f"note ends in {_show(block.rsplit(chr(10), 1)[-1])} without a final newline; "
            "expected every signature line to end in a newline (trailing garbage?)"
        )
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(
            f"note has {len(lines)} signature lines, above the limit of {MAX_SIGNATURES}"
        )
    return text, [_parse_signature_line(number, line) for number, line in enumerate(lines, 1)]


def _parse_signature_line(number: int, line: str) -> _SignatureLine:
    expected = "expected '— <key name> <base64 key hash and signature>'"
    if not line.startswith(_SIGNATURE_PREFIX):
        raise CheckpointError(
            f"signature line {number} {_show(line)} does not start with an em dash and a "
            f"space; {expected}"
        )
    name, _, blob = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not _is_key_name(name):
        raise CheckpointError(
            f"signature line {number} has key name {_show(name)}, which is empty or holds "
            f"spaces or '+'; {expected}"
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(
            f"signature line {number} ({name}) has {_show(blob)}, which is not standard "
            f"base64 ({exc}); {expected}"
        ) from exc
    if len(raw) <= _KEY_HASH_BYTES:
        raise CheckpointError(
            f"signature line {number} ({name}) decodes to {len(raw)} bytes, expected a "
            f"{_KEY_HASH_BYTES}-byte key hash followed by a signature"
        )
    return _SignatureLine(name, raw[:_KEY_HASH_BYTES], raw[_KEY_HASH_BYTES:])


def _verify(text: str, signatures: list[_SignatureLine], key: VerifyingKey, name: str) -> None:
    """Raise CheckpointError unless a signature line by ``key`` as ``name`` verifies ``text``.

    As signed-note requires, lines by other keys (another name or key hash) are
    ignored, and a line by this key that does not verify rejects the note.
    """
    expected_hash = key_hash(name, key)
    label = f"{name}+{expected_hash.hex()}"
    message = text.encode("utf-8")
    verified = False
    for line in signatures:
        if line.name != name or line.key_hash != expected_hash:
            continue
        try:
            key.verify(line.signature, message)
        except BadSignature as exc:
            raise CheckpointError(
                f"the signature by key {label} does not verify: the note was altered after "
                "signing, or forged; do not rely on it"
            ) from exc
        verified = True
    if not verified:
        keys = list(dict.fromkeys(f"{line.name}+{line.key_hash.hex()}" for line in signatures))
        found = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise CheckpointError(
            f"note has no signature by key {label}; it is signed by {found}. Check that it "
            "comes from the expected log and that you pinned that log's current public key"
        )


# --- the checkpoint body -------------------------------------------------------


def _parse_body(text: str) -> Checkpoint:
    lines = text.split("\n")[:-1]  # ``text`` ends in a newline
    expected = f"origin, tree size, root hash and '{TIME_EXTENSION} <ms>' lines"
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint text has {len(lines)} lines, expected {expected}")
    origin = check_origin(lines[0])
    size = _parse_integer(lines[1], "tree size")
    root = _parse_root(lines[2])
    times: list[str] = []
    for extension in lines[3:]:
        keyword, _, value = extension.partition(" ")
        if keyword == TIME_EXTENSION:
            times.append(value)
        elif not extension:
            raise CheckpointError(
                f"checkpoint text has an empty line after the root hash; expected {expected}"
            )
        else:
            raise CheckpointError(
                f"checkpoint has unknown extension line {_show(extension)}; this release "
                f"writes and accepts only '{TIME_EXTENSION} <ms>' (is the log newer than "
                "this Liaison?)"
            )
    if len(times) != 1:
        raise CheckpointError(
            f"checkpoint has {len(times)} '{TIME_EXTENSION}' lines, expected exactly one"
        )
    checkpoint = Checkpoint(
        origin=origin, size=size, root=root, time_ms=_parse_integer(times[0], TIME_EXTENSION)
    )
    # Every field was checked to be canonical; this guards the whole: a
    # checkpoint has exactly one text, so one signed text means one checkpoint.
    if checkpoint.body() != text:
        raise CheckpointError("checkpoint text is not in canonical form")
    return checkpoint


def _parse_integer(value: str, what: str) -> int:
    if not _CANONICAL_DECIMAL.fullmatch(value) or int(value) > MAX_INTEGER:
        raise CheckpointError(
            f"checkpoint {what} is {_show(value)}, expected a decimal number from 0 to "
            f"{MAX_INTEGER} written with ASCII digits only, without sign or leading zeros"
        )
    return int(value)


def _parse_root(value: str) -> bytes:
    expected = f"expected the standard base64 of a {_ROOT_BYTES}-byte SHA-256 tree hash"
    try:
        root = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(
            f"checkpoint root hash {_show(value)} is not base64 ({exc}); {expected}"
        ) from exc
    if len(root) != _ROOT_BYTES:
        raise CheckpointError(f"checkpoint root hash decodes to {len(root)} bytes; {expected}")
    if base64.b64encode(root).decode("ascii") != value:
        raise CheckpointError(f"checkpoint root hash {_show(value)} is not canonical; {expected}")
    return root


# --- small helpers ---------------------------------------------------------------


def _check_integer(value: int, what: str) -> None:
    if type(value) is not int or not 0 <= value <= MAX_INTEGER:
        raise CheckpointError(
            f"checkpoint {what} is {value!r}, expected an int from 0 to {MAX_INTEGER}"
        )


def _is_key_name(name: str) -> bool:
    """signed-note: key names are non-empty, without Unicode spaces or '+'."""
    return bool(name) and _NOT_IN_KEY_NAME.search(name) is None


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not _is_key_name(name):
        raise CheckpointError(
            f"key name {_show(name)} is empty or holds spaces, control characters or '+'; "
            "use the log's origin"
        )


def _show(value: object, limit: int = 64) -> str:
    """repr() of a value from a note, cut short so an error message stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(char: str) -> str:
    return "a space" if char == " " else f"{char!r} (U+{ord(char):04X})"
