"""Signed envelopes (DSSE v1) and the PEM keys behind them, with real Ed25519 keys."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from liaison import keys
from liaison.envelope import (
    ANSWER_TYPE,
    MAX_PAYLOAD_BYTES,
    REQUEST_TYPE,
    Envelope,
    open_envelope,
    pae,
    seal,
)
from liaison.errors import BadSignature, ConfigError
from liaison.keys import KeyId, SigningKey, VerifyingKey, key_id_of

PAYLOAD = b"\x0a\x24query-id\x00\xff with every byte value \x01\x02"


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    return SigningKey.generate()


def trusting(*keys: SigningKey) -> dict[KeyId, VerifyingKey]:
    return {k.key_id: k.verifying_key for k in keys}


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --- the pre-authentication encoding -------------------------------------------------


def test_pae_matches_the_dsse_specification_example() -> None:
    # prepare: the example from the DSSE v1 protocol document

    # execute
    encoded = pae("http://example.com/HelloWorld", b"hello world")

    # assert
    assert encoded == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_bytes_not_characters() -> None:
    # prepare: a two-byte character and an empty body

    # execute
    encoded = pae("é", b"")

    # assert
    assert encoded == b"DSSEv1 2 \xc3\xa9 0 "


def test_pae_separates_type_from_body() -> None:
    # prepare: the same bytes split differently between type and body

    # execute
    one = pae("ab", b"c")
    other = pae("a", b"bc")

    # assert
    assert one != other


# --- seal and open ---------------------------------------------------------------------


def test_seal_then_open_returns_the_payload(signer: SigningKey) -> None:
    # prepare
    envelope = seal(signer, REQUEST_TYPE, PAYLOAD)

    # execute
    opened = open_envelope(envelope, REQUEST_TYPE, trusting(signer))

    # assert
    assert opened == PAYLOAD
    assert envelope.key_id == signer.key_id
    assert envelope.payload_type == REQUEST_TYPE


def test_signature_covers_the_pae_not_the_raw_payload(signer: SigningKey) -> None:
    # prepare
    envelope = seal(signer, ANSWER_TYPE, PAYLOAD)

    # execute: verify with the bare cryptography API, as an independent verifier would
    signer.verifying_key.public_key.verify(envelope.signature, pae(ANSWER_TYPE, PAYLOAD))

    # assert: the raw payload alone is not what was signed
    with pytest.raises(BadSignature, match=r"^signature does not verify under key [0-9a-f]{16}…$"):
        signer.verifying_key.verify(envelope.signature, PAYLOAD)


def test_empty_payload_round_trips(signer: SigningKey) -> None:
    # prepare
    envelope = seal(signer, ANSWER_TYPE, b"")

    # execute
    opened = open_envelope(envelope, ANSWER_TYPE, trusting(signer))

    # assert
    assert opened == b""


def test_a_request_cannot_pass_as_an_answer(signer: SigningKey) -> None:
    # prepare
    envelope = seal(signer, REQUEST_TYPE, PAYLOAD)

    # execute / assert
    with pytest.raises(
        BadSignature,
        match=re.escape(f"envelope carries {REQUEST_TYPE!r}, expected {ANSWER_TYPE!r}"),
    ):
        open_envelope(envelope, ANSWER_TYPE, trusting(signer))


def test_relabelled_payload_type_breaks_the_signature(signer: SigningKey) -> None:
    # prepare: an answer relabelled as a request, so the type check alone passes
    answer = seal(signer, ANSWER_TYPE, PAYLOAD)
    relabelled = dataclasses.replace(answer, payload_type=REQUEST_TYPE)

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key [0-9a-f]{16}…$"):
        open_envelope(relabelled, REQUEST_TYPE, trusting(signer))


def test_untrusted_key_is_refused_and_named(signer: SigningKey) -> None:
    # prepare
    stranger = SigningKey.generate()
    envelope = seal(stranger, REQUEST_TYPE, PAYLOAD)

    # execute / assert
    with pytest.raises(
        BadSignature,
        match=re.escape(
            f"envelope is signed by key {stranger.key_id[:16]!r}…, which is not trusted"
        )
        + ".*add its public key to the trusted keys",
    ):
        open_envelope(envelope, REQUEST_TYPE, trusting(signer))


def test_no_trusted_keys_trusts_nothing(signer: SigningKey) -> None:
    # prepare
    envelope = seal(signer, REQUEST_TYPE, PAYLOAD)

    # execute / assert
    with pytest.raises(BadSignature, match="which is not trusted here"):
        open_envelope(envelope, REQUEST_TYPE, {})


def test_key_id_claimed_by_a_forger_does_not_help(signer: SigningKey) -> None:
    # prepare: signed by a stranger, but claiming the trusted key's id
    stranger = SigningKey.generate()
    forged = dataclasses.replace(seal(stranger, REQUEST_TYPE, PAYLOAD), key_id=signer.key_id)

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
        open_envelope(forged, REQUEST_TYPE, trusting(signer))


@pytest.mark.parametrize("index", [0, len(PAYLOAD) // 2, len(PAYLOAD) - 1])
def test_tampered_payload_is_refused(signer: SigningKey, index: int) -> None:
    # prepare
    envelope = seal(signer, REQUEST_TYPE, PAYLOAD)
    tampered = dataclasses.replace(envelope, payload=flip(envelope.payload, index))

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
        open_envelope(tampered, REQUEST_TYPE, trusting(signer))


def test_appended_payload_byte_is_refused(signer: SigningKey) -> None:
    # prepare
    envelope = seal(signer, REQUEST_TYPE, PAYLOAD)
    tampered = dataclasses.replace(envelope, payload=envelope.payload + b"\x00")

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
        open_envelope(tampered, REQUEST_TYPE, trusting(signer))


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_tampered_signature_is_refused(signer: SigningKey, index: int) -> None:
    # prepare
    envelope = seal(signer, REQUEST_TYPE, PAYLOAD)
    tampered = dataclasses.replace(envelope, signature=flip(envelope.signature, index))

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
        open_envelope(tampered, REQUEST_TYPE, trusting(signer))


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"\x00" * 63, b"\x00" * 65])
def test_malformed_signature_is_refused_as_bad_signature(
    signer: SigningKey, signature: bytes
) -> None:
    # prepare
    envelope = dataclasses.replace(seal(signer, REQUEST_TYPE, PAYLOAD), signature=signature)

    # execute / assert
    with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
        open_envelope(envelope, REQUEST_TYPE, trusting(signer))


def test_oversized_payload_is_refused_before_verification(signer: SigningKey) -> None:
    # prepare: a valid signature, one byte above the limit
    envelope = seal(signer, REQUEST_TYPE, b"\x00" * (MAX_PAYLOAD_BYTES + 1))

    # execute / assert
    with pytest.raises(
        BadSignature,
        match=re.escape(
            f"envelope payload is {MAX_PAYLOAD_BYTES + 1} bytes, above the "
            f"{MAX_PAYLOAD_BYTES}-byte limit"
        ),
    ):
        open_envelope(envelope, REQUEST_TYPE, trusting(signer))


def test_payload_at_the_limit_is_accepted(signer: SigningKey) -> None:
    # prepare
    payload = b"\x00" * MAX_PAYLOAD_BYTES
    envelope = seal(signer, REQUEST_TYPE, payload)

    # execute
    opened = open_envelope(envelope, REQUEST_TYPE, trusting(signer))

    # assert
    assert len(opened) == MAX_PAYLOAD_BYTES


def test_signatures_are_deterministic(signer: SigningKey) -> None:
    # prepare / execute: Ed25519 signs deterministically, so equal inputs seal equally
    first = seal(signer, ANSWER_TYPE, PAYLOAD)
    second = seal(signer, ANSWER_TYPE, PAYLOAD)

    # assert
    assert first == second
    assert isinstance(first, Envelope)


# --- keys ------------------------------------------------------------------------------


def test_key_pair_round_trips_through_pem_files(tmp_path: Path) -> None:
    # prepare
    key = SigningKey.generate()
    private_path, public_path = tmp_path / "keys" / "node.key", tmp_path / "keys" / "node.pub"

    # execute
    key.write(private_path, public_path)
    loaded = SigningKey.from_pem_file(private_path)
    pinned = VerifyingKey.from_pem_file(public_path)

    # assert
    assert loaded.key_id == key.key_id == pinned.key_id
    assert loaded.to_pem() == key.to_pem()
    assert pinned.to_pem() == key.verifying_key.to_pem()
    envelope = seal(loaded, ANSWER_TYPE, PAYLOAD)
    assert open_envelope(envelope, ANSWER_TYPE, {pinned.key_id: pinned}) == PAYLOAD
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_private_key_written_over_an_existing_file_is_owner_only(tmp_path: Path) -> None:
    # prepare: a key file left world-readable by an earlier copy or a careless editor
    private_path, public_path = tmp_path / "node.key", tmp_path / "node.pub"
    private_path.write_bytes(b"old key material")
    private_path.chmod(0o644)

    # execute
    SigningKey.generate().write(private_path, public_path)

    # assert
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


def test_key_id_is_the_sha256_of_the_der_public_key() -> None:
    # prepare
    key = SigningKey.generate()
    der = key.verifying_key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    # execute
    key_id = key.key_id

    # assert
    assert key_id == hashlib.sha256(der).hexdigest()
    assert key_id == key_id_of(key.verifying_key.public_key)
    assert re.fullmatch(r"[0-9a-f]{64}", key_id)


def test_distinct_keys_have_distinct_ids() -> None:
    # prepare / execute
    ids = {SigningKey.generate().key_id for _ in range(8)}

    # assert
    assert len(ids) == 8


def test_missing_private_key_file_says_how_to_create_one(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "absent.key"

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"signing key file {path} does not exist; create keys with `liaison init`"),
    ):
        SigningKey.from_pem_file(path)


def test_missing_public_key_file_is_named(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "absent.pub"

    # execute / assert
    with pytest.raises(
        ConfigError, match=re.escape(f"public key file {path} does not exist; check the path")
    ):
        VerifyingKey.from_pem_file(path)


def test_garbage_is_not_a_public_key(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "garbage.pub"
    path.write_bytes(b"not a key at all\n")

    # execute / assert
    with pytest.raises(ConfigError, match=re.escape(f"{path} is not a PEM public key (")):
        VerifyingKey.from_pem_file(path)


def test_garbage_is_not_a_private_key(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "garbage.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")

    # execute / assert
    with pytest.raises(
        ConfigError, match=re.escape(f"{path} is not an unencrypted PEM private key (")
    ):
        SigningKey.from_pem_file(path)


def test_public_key_given_as_signing_key_is_refused(tmp_path: Path) -> None:
    # prepare: a common mix-up, node.pub where node.key belongs
    key = SigningKey.generate()
    key.write(tmp_path / "node.key", tmp_path / "node.pub")

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{tmp_path / 'node.pub'} is not an unencrypted PEM private key"),
    ):
        SigningKey.from_pem_file(tmp_path / "node.pub")


def test_encrypted_private_key_is_refused(tmp_path: Path) -> None:
    # prepare
    key = SigningKey.generate()
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )

    # execute / assert
    with pytest.raises(
        ConfigError, match=re.escape(f"{path} is not an unencrypted PEM private key")
    ):
        SigningKey.from_pem_file(path)


def test_ec_private_key_is_the_wrong_type(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "ec.key"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path} holds a ECPrivateKey, expected an Ed25519 private key"),
    ):
        SigningKey.from_pem_file(path)


def test_rsa_public_key_is_the_wrong_type(tmp_path: Path) -> None:
    # prepare
    path = tmp_path / "rsa.pub"
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    # execute / assert
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path} holds a RSAPublicKey, expected an Ed25519 public key"),
    ):
        VerifyingKey.from_pem_file(path)


def test_private_key_given_as_public_key_is_refused(tmp_path: Path) -> None:
    # prepare
    key = SigningKey.generate()
    key.write(tmp_path / "gw.key", tmp_path / "gw.pub")

    # execute / assert
    with pytest.raises(
        ConfigError, match=re.escape(f"{tmp_path / 'gw.key'} is not a PEM public key (")
    ):
        VerifyingKey.from_pem_file(tmp_path / "gw.key")


# --- one Ed25519 check, whichever library makes it ----------------------------------------

# libsodium (PyNaCl) checks signatures when it is installed, OpenSSL (cryptography)
# otherwise: each is run here, and they must agree on every case.
BACKENDS = [
    pytest.param(
        "libsodium",
        marks=pytest.mark.skipif(keys._SODIUM is None, reason="PyNaCl is not installed"),
    ),
    pytest.param("openssl"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == "openssl":
        monkeypatch.setattr(keys, "_SODIUM", None)
    return name


def forged_cases(signer: SigningKey) -> list[tuple[bytes, bytes]]:
    """(signature, message) pairs no honest signer made for ``signer``'s key."""
    message = pae(ANSWER_TYPE, PAYLOAD)
    signature = signer.sign(message)
    other = SigningKey.generate()
    # S = L (the group order): non-canonical, so no valid signature has it.
    order = (2**252 + 27742317777372353535851937790883648493).to_bytes(32, "little")
    return [
        (flip(signature, 0), message),  # R changed
        (flip(signature, 40), message),  # S changed
        (signature, flip(message, 5)),  # the message changed
        (signature, message + b"\x00"),  # one byte appended
        (other.sign(message), message),  # another key's signature
        (signature[:32] + order, message),
        (signature[:63], message),
        (signature + b"\x00", message),
        (b"", message),
    ]


def test_a_signature_verifies_under_either_library(signer: SigningKey, backend: str) -> None:
    message = pae(ANSWER_TYPE, PAYLOAD)
    signer.verifying_key.verify(signer.sign(message), message)
    signer.verifying_key.verify(signer.sign(b""), b"")


def test_either_library_refuses_every_forgery_as_bad_signature(
    signer: SigningKey, backend: str
) -> None:
    for signature, message in forged_cases(signer):
        with pytest.raises(BadSignature, match=r"^signature does not verify under key "):
            signer.verifying_key.verify(signature, message)


def test_a_key_read_from_pem_verifies_like_the_generated_one(
    signer: SigningKey, backend: str, tmp_path: Path
) -> None:
    # The raw key libsodium takes is derived when the key is made, however it is made.
    signer.write(tmp_path / "k.key", tmp_path / "k.pub")
    loaded = VerifyingKey.from_pem_file(tmp_path / "k.pub")
    message = pae(REQUEST_TYPE, PAYLOAD)

    loaded.verify(signer.sign(message), message)
    assert loaded == signer.verifying_key
    with pytest.raises(BadSignature):
        loaded.verify(SigningKey.generate().sign(message), message)
