"""SessionCipher on its own: envelope, key ids, associated data, rotation, blind
indexes, configuration from the environment, and that no key ever shows."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from telethon_firestore_session.crypto import (
    ENV_KEY,
    ENV_OLD_KEYS,
    OVERHEAD,
    SessionCipher,
    generate_key,
    is_sealed,
    main,
)
from telethon_firestore_session.errors import ConfigError, SessionDecryptionError
from tests.leaks import assert_absent

RAW_A = bytes(range(32))
RAW_B = bytes(range(100, 132))
KEY_A = base64.urlsafe_b64encode(RAW_A).decode()
KEY_B = base64.urlsafe_b64encode(RAW_B).decode()
WHERE = "mybot/42"


def key_forms(raw: bytes) -> list[str]:
    """Every way a key could leak into text."""
    return [
        raw.hex(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        repr(raw)[2:-1],
    ]


def test_generate_key_is_fresh_urlsafe_base64_of_32_bytes() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    for k in keys:
        assert len(base64.urlsafe_b64decode(k)) == 32
        assert "+" not in k and "/" not in k
        SessionCipher(k)  # accepted as it is


def test_envelope_layout_and_key_id() -> None:
    c = SessionCipher(RAW_A)
    value = bytes(range(256))
    sealed = c.seal(value, where=WHERE, field="auth_key")
    key_id = hmac.new(RAW_A, b"key-id", hashlib.sha256).digest()[:4]
    assert sealed[:3] == b"TFS" and sealed[3] == 1
    assert sealed[4:8] == key_id and c.key_id == key_id.hex()
    assert len(sealed) == len(value) + OVERHEAD == len(value) + 3 + 1 + 4 + 12 + 16
    assert_absent(sealed, value=value)
    assert c.open(sealed, where=WHERE, field="auth_key") == value
    assert c.sealed_with(sealed) == key_id.hex()
    assert is_sealed(sealed) and c.is_sealed(sealed)


def test_fresh_nonce_per_value() -> None:
    c = SessionCipher(KEY_A)
    a = c.seal(b"same", where=WHERE, field="f")
    b = c.seal(b"same", where=WHERE, field="f")
    assert a != b
    assert a[8:20] != b[8:20]  # the nonces
    assert c.open(a, where=WHERE, field="f") == c.open(b, where=WHERE, field="f") == b"same"


def test_raw_and_text_keys_are_the_same_key() -> None:
    by_raw, by_text = SessionCipher(RAW_A), SessionCipher(KEY_A)
    assert by_raw.key_id == by_text.key_id
    assert by_text.open(by_raw.seal(b"x", where=WHERE, field="f"), where=WHERE, field="f") == b"x"
    # Padding is optional in the text form, and the standard base64 alphabet works too.
    assert SessionCipher(KEY_A.rstrip("=")).key_id == by_raw.key_id
    raw = bytes([0xFB, 0xFF] * 16)
    standard, urlsafe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert "+" in standard and "/" in standard and standard != urlsafe
    assert SessionCipher(standard).key_id == SessionCipher(urlsafe).key_id == SessionCipher(raw).key_id


def test_text_round_trip() -> None:
    c = SessionCipher(RAW_A)
    sealed = c.seal_text("Zoë 🦊", where=WHERE, field="entities/5/name")
    assert isinstance(sealed, bytes)
    assert c.open_text(sealed, where=WHERE, field="entities/5/name") == "Zoë 🦊"


@pytest.mark.parametrize(
    ("where", "field"),
    [("mybot/43", "auth_key"), ("otherbot/42", "auth_key"), (WHERE, "entities/1/username"), ("mybot/4", "2/auth_key")],
)
def test_associated_data_binds_session_and_field(where: str, field: str) -> None:
    c = SessionCipher(RAW_A)
    sealed = c.seal(b"secret", where=WHERE, field="auth_key")
    with pytest.raises(SessionDecryptionError) as info:
        c.open(sealed, where=where, field=field)
    assert info.value.where == where and info.value.field == field
    assert "another session or field" in info.value.reason


@pytest.mark.parametrize("index", [3, 9, 19, 20, 25, -1])
def test_tampering_any_part_is_detected(index: int) -> None:
    c = SessionCipher(RAW_A)
    sealed = bytearray(c.seal(b"x" * 40, where=WHERE, field="f"))
    sealed[index] ^= 0x01
    with pytest.raises(SessionDecryptionError):
        c.open(bytes(sealed), where=WHERE, field="f")


def test_tampered_key_id_names_an_unknown_key() -> None:
    c = SessionCipher(RAW_A)
    sealed = bytearray(c.seal(b"x", where=WHERE, field="f"))
    sealed[5] ^= 0xFF
    with pytest.raises(SessionDecryptionError, match="not configured"):
        c.open(bytes(sealed), where=WHERE, field="f")


def test_truncated_and_plaintext_values_do_not_open() -> None:
    c = SessionCipher(RAW_A)
    sealed = c.seal(b"x" * 40, where=WHERE, field="f")
    for bad in (sealed[: OVERHEAD - 1], sealed[:-1], b"", b"x" * 256):
        with pytest.raises(SessionDecryptionError):
            c.open(bad, where=WHERE, field="f")
    assert not is_sealed(b"x" * 256)
    assert not is_sealed("TFS" + "x" * 64)  # text is never sealed
    assert not is_sealed(None)


def test_unknown_format_version() -> None:
    c = SessionCipher(RAW_A)
    sealed = bytearray(c.seal(b"x", where=WHERE, field="f"))
    sealed[3] = 2
    assert is_sealed(bytes(sealed))
    with pytest.raises(SessionDecryptionError, match="unknown envelope format 2"):
        c.open(bytes(sealed), where=WHERE, field="f")


def test_wrong_key() -> None:
    sealed = SessionCipher(RAW_A).seal(b"x", where=WHERE, field="auth_key")
    other = SessionCipher(RAW_B)
    with pytest.raises(SessionDecryptionError) as info:
        other.open(sealed, where=WHERE, field="auth_key")
    assert SessionCipher(RAW_A).key_id in str(info.value)
    assert other.key_id in str(info.value)
    assert other.needs_reseal(sealed)


def test_rotation_old_keys_open_and_need_reseal() -> None:
    old = SessionCipher(RAW_A)
    sealed_old = old.seal(b"value", where=WHERE, field="f")
    rotated = SessionCipher(RAW_B, old_keys=[KEY_A])
    assert rotated.key_ids == (rotated.key_id, old.key_id)
    assert rotated.open(sealed_old, where=WHERE, field="f") == b"value"
    assert rotated.needs_reseal(sealed_old)
    resealed = rotated.seal(b"value", where=WHERE, field="f")
    assert not rotated.needs_reseal(resealed)
    assert rotated.sealed_with(resealed) == rotated.key_id
    assert not rotated.needs_reseal(b"plaintext")
    # The old key alone cannot open what the new key sealed.
    with pytest.raises(SessionDecryptionError):
        old.open(resealed, where=WHERE, field="f")
    # The current key repeated among the old keys is harmless.
    assert SessionCipher(RAW_B, [RAW_B, RAW_A]).key_ids == rotated.key_ids


def test_blind_index() -> None:
    c = SessionCipher(RAW_A)
    bi = c.blind_index("alice", where=WHERE, field="username")
    assert bi == c.blind_index("alice", where=WHERE, field="username")
    assert len(bi) == 22 and base64.urlsafe_b64decode(bi + "==")
    assert bi != c.blind_index("alicf", where=WHERE, field="username")
    assert bi != c.blind_index("alice", where=WHERE, field="name")
    assert bi != c.blind_index("alice", where="mybot/43", field="username")
    # Not a plain hash of the value, and under another key it is another index.
    assert bi != SessionCipher(RAW_B).blind_index("alice", where=WHERE, field="username")
    rotated = SessionCipher(RAW_B, [RAW_A])
    indexes = rotated.blind_indexes("alice", where=WHERE, field="username")
    assert indexes == (rotated.blind_index("alice", where=WHERE, field="username"), bi)


def test_from_env() -> None:
    assert SessionCipher.from_env({}) is None
    assert SessionCipher.from_env({ENV_KEY: ""}) is None
    assert SessionCipher.from_env({ENV_KEY: "  "}) is None
    c = SessionCipher.from_env({ENV_KEY: f" {KEY_B}\n", ENV_OLD_KEYS: f" {KEY_A} , ,"})
    assert c is not None
    assert c.key_ids == (SessionCipher(RAW_B).key_id, SessionCipher(RAW_A).key_id)
    only = SessionCipher.from_env({ENV_KEY: KEY_A})
    assert only is not None and only.key_ids == (only.key_id,)


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KEY, KEY_A)
    monkeypatch.delenv(ENV_OLD_KEYS, raising=False)
    c = SessionCipher.from_env()
    assert c is not None and c.key_id == SessionCipher(RAW_A).key_id
    monkeypatch.delenv(ENV_KEY)
    assert SessionCipher.from_env() is None


BAD_VALUES = [
    "not base64!",
    base64.urlsafe_b64encode(bytes(16)).decode(),  # 16 bytes: AES-128 is not enough
    base64.urlsafe_b64encode(bytes(range(33))).decode(),
    KEY_A + "AAAA",
    KEY_A[:-2] + "!=",
]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_bad_keys_name_the_variable_and_never_echo_the_value(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionCipher.from_env({ENV_KEY: bad})
    assert info.value.variable == ENV_KEY
    assert bad.strip() not in str(info.value)
    with pytest.raises(ConfigError) as info:
        SessionCipher.from_env({ENV_KEY: KEY_A, ENV_OLD_KEYS: f"{KEY_B},{bad}"})
    assert info.value.variable == ENV_OLD_KEYS
    assert "entry 2" in str(info.value)
    for text in (bad.strip(), KEY_A, KEY_B):
        assert text not in str(info.value)


def test_from_env_reads_secret_files(tmp_path: Path) -> None:
    key_file = tmp_path / "session_key"
    key_file.write_text(KEY_B + "\n")
    old_file = tmp_path / "old_keys"
    old_file.write_text(KEY_A)
    c = SessionCipher.from_env({f"{ENV_KEY}_FILE": str(key_file), f"{ENV_OLD_KEYS}_FILE": str(old_file)})
    assert c is not None
    assert c.key_ids == (SessionCipher(RAW_B).key_id, SessionCipher(RAW_A).key_id)
    # An empty file is no key, like an empty variable.
    (tmp_path / "empty").write_text("\n")
    assert SessionCipher.from_env({f"{ENV_KEY}_FILE": str(tmp_path / "empty")}) is None
    # Errors name the _FILE variable, never the contents.
    (tmp_path / "bad").write_text("not-a-key-at-all")
    with pytest.raises(ConfigError) as info:
        SessionCipher.from_env({f"{ENV_KEY}_FILE": str(tmp_path / "bad")})
    assert info.value.variable == f"{ENV_KEY}_FILE" and "not-a-key-at-all" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read") as info:
        SessionCipher.from_env({f"{ENV_KEY}_FILE": str(tmp_path / "missing")})
    assert info.value.variable == f"{ENV_KEY}_FILE"
    with pytest.raises(ConfigError, match="set only one") as info:
        SessionCipher.from_env({ENV_KEY: KEY_A, f"{ENV_KEY}_FILE": str(key_file)})
    assert KEY_A not in str(info.value) and KEY_B not in str(info.value)


def test_old_keys_without_a_current_key() -> None:
    with pytest.raises(ConfigError) as info:
        SessionCipher.from_env({ENV_OLD_KEYS: KEY_A})
    assert info.value.variable == ENV_KEY
    assert KEY_A not in str(info.value)


def test_constructor_rejects_bad_keys() -> None:
    with pytest.raises(ConfigError, match="32 raw bytes"):
        SessionCipher(bytes(31))
    with pytest.raises(ConfigError, match="32 raw bytes"):
        SessionCipher(KEY_A.encode())  # the text form passed as bytes
    with pytest.raises(ConfigError, match="sequence of keys"):
        SessionCipher(RAW_A, KEY_B)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="entry 1"):
        SessionCipher(RAW_A, [b"short"])
    with pytest.raises(ConfigError):
        SessionCipher(123)  # type: ignore[arg-type]


def test_repr_shows_key_ids_only() -> None:
    c = SessionCipher(RAW_B, [RAW_A])
    text = repr(c) + str(c) + repr(c._keys) + repr(c._current)
    assert c.key_id in text and SessionCipher(RAW_A).key_id in text
    for raw in (RAW_A, RAW_B):
        for form in key_forms(raw):
            assert form not in text


def test_decryption_errors_never_show_keys_or_plaintext() -> None:
    secret = bytes(range(256))
    sealed = SessionCipher(RAW_A).seal(secret, where=WHERE, field="auth_key")
    messages = []
    for cipher, where in ((SessionCipher(RAW_B), WHERE), (SessionCipher(RAW_A), "mybot/43")):
        with pytest.raises(SessionDecryptionError) as info:
            cipher.open(sealed, where=where, field="auth_key")
        # No chained exception from the crypto library drags internals along.
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__
        messages.append(str(info.value) + repr(info.value))
    text = "\n".join(messages)
    for form in key_forms(RAW_A) + key_forms(RAW_B) + key_forms(secret) + key_forms(sealed):
        assert form not in text


def test_keygen_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    out = capsys.readouterr().out.strip()
    assert SessionCipher(out).key_id
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
