"""Encryption at rest in Firestore (real emulator): sealed auth keys, failures that
never overwrite, rotation, plaintext-to-sealed migration, sealed entity fields with
lazy blind-index lookups, and no secret in any log record or error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from telethon import TelegramClient
from telethon.crypto import AuthKey
from telethon.tl import types

from telethon_firestore_session import (
    ConfigError,
    FirestoreSession,
    SessionCorruptError,
    SessionDecryptionError,
    SessionRotationError,
)
from telethon_firestore_session.crypto import OVERHEAD, SessionCipher, is_sealed
from telethon_firestore_session.entities import decode
from telethon_firestore_session.firestore import rotate_firestore_sessions
from tests.common import AUTH_A, AUTH_B, KEY_NEW, KEY_OLD, PEOPLE, RAW_NEW, RAW_OLD, person

from .leaks import assert_absent, find_leaks


def open_session(client: Any, bot_id: str, uid: object = "42", **kw: Any) -> FirestoreSession:
    return FirestoreSession(uid, bot_id=bot_id, client=client, **kw)  # type: ignore[arg-type]


def doc(client: Any, bot_id: str, uid: str = "42") -> Any:
    return client.document(f"bots/{bot_id}/user_sessions/{uid}")


def raw(ref: Any) -> tuple[dict[str, Any] | None, Any]:
    """A document's stored fields and update time: equal before and after means untouched."""
    snap = ref.get()
    return (snap.to_dict() if snap.exists else None), (snap.update_time if snap.exists else None)


def stored_key(client: Any, bot_id: str, uid: str = "42") -> bytes:
    data, _ = raw(doc(client, bot_id, uid))
    assert data is not None
    value = data["auth_key"]
    assert isinstance(value, bytes)
    return value


def make(client: Any, bot_id: str, uid: str = "42", auth: bytes = AUTH_A, **kw: Any) -> FirestoreSession:
    s = open_session(client, bot_id, uid, **kw)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(auth)
    s.save()
    return s


PLAINTEXT = ["alicew", "15550001111", "Alice Wonder", "bob_b", "447700900123", "Bob", "4915112345678", "Carol Kings"]


# -- the auth key ------------------------------------------------------------------------------


async def test_auth_key_is_sealed_and_opens(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    make(firestore_client, bot_id, cipher=old).close()
    sealed = stored_key(firestore_client, bot_id)
    assert is_sealed(sealed) and len(sealed) == 256 + OVERHEAD
    assert_absent(sealed, auth_key=AUTH_A)
    assert old.sealed_with(sealed) == old.key_id
    # Bound to bot_id/user_id/auth_key.
    assert old.open(sealed, where=f"{bot_id}/42", field="auth_key") == AUTH_A

    again = open_session(firestore_client, bot_id, cipher=old)
    assert again.auth_key is not None and again.auth_key.key == AUTH_A
    assert (again.dc_id, again.server_address, again.port) == (2, "149.154.167.51", 443)
    # A real client builds its sender from the opened key.
    client = TelegramClient(again, 12345, "0123456789abcdef0123456789abcdef")
    assert client._sender.auth_key.key == AUTH_A


def test_each_save_uses_a_fresh_nonce(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    s = make(firestore_client, bot_id, cipher=old)
    first = stored_key(firestore_client, bot_id)
    s.takeout_id = 7
    s.save()
    second = stored_key(firestore_client, bot_id)
    assert first != second
    assert old.open(second, where=f"{bot_id}/42", field="auth_key") == AUTH_A


def test_no_key_configured_for_a_sealed_session(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    make(firestore_client, bot_id, cipher=old).close()
    before = raw(doc(firestore_client, bot_id))
    with pytest.raises(SessionDecryptionError) as info:
        open_session(firestore_client, bot_id)
    assert info.value.field == "auth_key"
    assert f"bots/{bot_id}/user_sessions/42" in info.value.where
    assert "no encryption key is configured" in str(info.value)
    assert raw(doc(firestore_client, bot_id)) == before


def test_wrong_key_never_overwrites(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    make(firestore_client, bot_id, cipher=old).close()
    before = raw(doc(firestore_client, bot_id))
    wrong = SessionCipher(KEY_NEW)
    with pytest.raises(SessionDecryptionError) as info:
        open_session(firestore_client, bot_id, cipher=wrong)
    assert old.key_id in str(info.value) and "not configured" in str(info.value)
    assert raw(doc(firestore_client, bot_id)) == before
    # ... and the right key still opens it.
    right = open_session(firestore_client, bot_id, cipher=old)
    assert right.auth_key is not None and right.auth_key.key == AUTH_A


def test_tampered_auth_key_never_overwrites(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    make(firestore_client, bot_id, cipher=old).close()
    tampered = bytearray(stored_key(firestore_client, bot_id))
    tampered[100] ^= 0x01
    doc(firestore_client, bot_id).update({"auth_key": bytes(tampered)})
    before = raw(doc(firestore_client, bot_id))
    with pytest.raises(SessionDecryptionError) as info:
        open_session(firestore_client, bot_id, cipher=old)
    assert info.value.field == "auth_key"
    assert "modified or belongs to another session" in info.value.reason
    assert raw(doc(firestore_client, bot_id)) == before


@pytest.mark.parametrize("with_cipher", [True, False])
def test_auth_key_of_the_wrong_length_is_refused_and_never_overwritten(
    firestore_client: Any, bot_id: str, old: SessionCipher, with_cipher: bool
) -> None:
    """Neither 256 bytes nor an envelope: the same rule as SQLite files, never read as a key nor re-sealed."""
    make(firestore_client, bot_id).close()
    for damaged in (AUTH_A[:100], AUTH_A + b"\x00"):
        doc(firestore_client, bot_id).update({"auth_key": damaged})
        before = raw(doc(firestore_client, bot_id))
        if with_cipher:
            with pytest.raises(SessionDecryptionError, match="modified or truncated") as info:
                open_session(firestore_client, bot_id, cipher=old)
            assert info.value.field == "auth_key"
        else:
            with pytest.raises(SessionCorruptError, match="not 256"):
                open_session(firestore_client, bot_id)
        assert raw(doc(firestore_client, bot_id)) == before


def test_auth_key_copied_from_another_user_does_not_open(
    firestore_client: Any, bot_id: str, old: SessionCipher
) -> None:
    make(firestore_client, bot_id, "1001", AUTH_A, cipher=old).close()
    make(firestore_client, bot_id, "1002", AUTH_B, cipher=old).close()
    make(firestore_client, f"{bot_id}-other", "1001", AUTH_B, cipher=old).close()
    doc(firestore_client, bot_id, "1002").update({"auth_key": stored_key(firestore_client, bot_id, "1001")})
    doc(firestore_client, f"{bot_id}-other", "1001").update({"auth_key": stored_key(firestore_client, bot_id, "1001")})
    for bot, uid in ((bot_id, "1002"), (f"{bot_id}-other", "1001")):
        before = raw(doc(firestore_client, bot, uid))
        with pytest.raises(SessionDecryptionError, match="another session"):
            open_session(firestore_client, bot, uid, cipher=old)
        assert raw(doc(firestore_client, bot, uid)) == before
    # The original owner is unaffected.
    a = open_session(firestore_client, bot_id, "1001", cipher=old)
    assert a.auth_key is not None and a.auth_key.key == AUTH_A


def test_cleared_auth_key_is_stored_as_none(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    s = make(firestore_client, bot_id, cipher=old)
    s.auth_key = None
    s.save()
    data, _ = raw(doc(firestore_client, bot_id))
    assert data is not None and data["auth_key"] is None
    assert open_session(firestore_client, bot_id, cipher=old).auth_key is None


# -- rotation and migration ----------------------------------------------------------------------


def test_old_key_opens_and_next_save_reseals(
    firestore_client: Any, bot_id: str, old: SessionCipher, new: SessionCipher
) -> None:
    make(firestore_client, bot_id, cipher=old).close()
    before = raw(doc(firestore_client, bot_id))
    s = open_session(firestore_client, bot_id, cipher=new)
    assert s.auth_key is not None and s.auth_key.key == AUTH_A
    assert raw(doc(firestore_client, bot_id)) == before  # opening writes nothing
    s.save()  # nothing changed, but the header is rewritten with the current key
    sealed = stored_key(firestore_client, bot_id)
    assert new.sealed_with(sealed) == new.key_id
    s.save()  # ... once
    assert stored_key(firestore_client, bot_id) == sealed
    # The old key can go now.
    only_new = open_session(firestore_client, bot_id, cipher=SessionCipher(KEY_NEW))
    assert only_new.auth_key is not None and only_new.auth_key.key == AUTH_A


def test_plaintext_session_is_sealed_on_next_save(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    make(firestore_client, bot_id).close()  # written before encryption was turned on
    assert stored_key(firestore_client, bot_id) == AUTH_A
    s = open_session(firestore_client, bot_id, cipher=old)
    assert s.auth_key is not None and s.auth_key.key == AUTH_A
    assert stored_key(firestore_client, bot_id) == AUTH_A  # not until save()
    s.save()
    sealed = stored_key(firestore_client, bot_id)
    assert is_sealed(sealed)
    assert_absent(sealed, auth_key=AUTH_A)
    with pytest.raises(SessionDecryptionError):
        open_session(firestore_client, bot_id)
    again = open_session(firestore_client, bot_id, cipher=old)
    assert again.auth_key is not None and again.auth_key.key == AUTH_A


def test_plaintext_key_that_looks_like_an_envelope(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    odd = b"TFS\x01" + AUTH_A[4:]
    make(firestore_client, bot_id, auth=odd).close()
    s = open_session(firestore_client, bot_id, cipher=old)
    assert s.auth_key is not None and s.auth_key.key == odd


def test_rotate_firestore_sessions(firestore_client: Any, bot_id: str, old: SessionCipher, new: SessionCipher) -> None:
    make(firestore_client, bot_id, "1", AUTH_A, cipher=old).close()
    make(firestore_client, bot_id, "2", AUTH_B).close()  # plaintext
    s3 = make(firestore_client, bot_id, "3", AUTH_B, cipher=old, encrypt_pii=True)
    s3.process_entities(PEOPLE)
    s3.close()
    before_3 = {d.id: d.to_dict() for d in doc(firestore_client, bot_id, "3").collection("entities").stream()}

    assert rotate_firestore_sessions(firestore_client, bot_id, new) == 3
    for uid in ("1", "2", "3"):
        assert new.sealed_with(stored_key(firestore_client, bot_id, uid)) == new.key_id
    after_3 = {d.id: d.to_dict() for d in doc(firestore_client, bot_id, "3").collection("entities").stream()}
    assert after_3.keys() == before_3.keys()
    for eid, data in after_3.items():
        assert data["hash"] == before_3[eid]["hash"] and data["date"] == before_3[eid]["date"]
        for f in ("username", "phone", "name"):
            if before_3[eid][f] is None:
                assert data[f] is None
            else:
                assert new.sealed_with(data[f]) == new.key_id
                assert data[f"{f}_bi"] != before_3[eid][f"{f}_bi"]
    # Everything opens with the new key alone, lookups included.
    only_new = SessionCipher(KEY_NEW)
    fresh = open_session(firestore_client, bot_id, "3", cipher=only_new, encrypt_pii=True)
    assert fresh.auth_key is not None and fresh.auth_key.key == AUTH_B
    assert fresh.get_input_entity("@alicew") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("+44 7700 900123") == types.InputPeerUser(502, 502 * 11)
    # Idempotent: a second run finds nothing to do and writes nothing.
    before = raw(doc(firestore_client, bot_id, "1"))
    assert rotate_firestore_sessions(firestore_client, bot_id, new) == 0
    assert raw(doc(firestore_client, bot_id, "1")) == before


def test_rotate_one_session_and_seal_plaintext_pii(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    s = make(firestore_client, bot_id, "7", AUTH_A)
    s.process_entities(PEOPLE)
    s.close()
    make(firestore_client, bot_id, "8", AUTH_B).close()
    assert rotate_firestore_sessions(firestore_client, bot_id, old, user_id=7, encrypt_pii=True) == 1
    assert stored_key(firestore_client, bot_id, "8") == AUTH_B  # another session: untouched
    entities = doc(firestore_client, bot_id, "7").collection("entities")
    text = repr([d.to_dict() for d in entities.stream()])
    for value in PLAINTEXT:
        assert value not in text
    fresh = open_session(firestore_client, bot_id, "7", cipher=old, encrypt_pii=True)
    assert fresh.get_input_entity("Carol Kings") == types.InputPeerUser(503, 503 * 11)


def test_rotate_skips_and_reports_a_session_it_cannot_open(
    firestore_client: Any, bot_id: str, new: SessionCipher
) -> None:
    stranger = SessionCipher(bytes(range(50, 82)))
    make(firestore_client, bot_id, "1", AUTH_A, cipher=stranger).close()
    make(firestore_client, bot_id, "2", AUTH_B).close()
    before = raw(doc(firestore_client, bot_id, "1"))
    with pytest.raises(SessionRotationError) as info:
        rotate_firestore_sessions(firestore_client, bot_id, new)
    assert info.value.rotated == 1
    [failure] = info.value.failures
    assert isinstance(failure, SessionDecryptionError) and info.value.__cause__ is failure
    assert "user_sessions/1" in failure.where and "user_sessions/1" in str(info.value)
    assert raw(doc(firestore_client, bot_id, "1")) == before
    assert new.sealed_with(stored_key(firestore_client, bot_id, "2")) == new.key_id


def test_rotation_does_not_overwrite_a_concurrent_write(
    firestore_client: Any, bot_id: str, old: SessionCipher, new: SessionCipher
) -> None:
    """The store re-reads a document that changed between its read and its write."""
    make(firestore_client, bot_id, cipher=old).close()
    store = open_session(firestore_client, bot_id, cipher=new)._firestore

    class RacingDoc:
        """The real document; right after the first read, another process logs in again."""

        def __init__(self, ref: Any) -> None:
            self.ref = ref
            self.reads = 0

        def get(self, *args: Any, **kw: Any) -> Any:
            snap = self.ref.get(*args, **kw)
            self.reads += 1
            if self.reads == 1:
                make(firestore_client, bot_id, auth=AUTH_B, cipher=old).close()
            return snap

        def __getattr__(self, name: str) -> Any:
            return getattr(self.ref, name)

    racing = RacingDoc(store.doc)
    store.doc = racing
    assert store.reseal() == 1
    assert racing.reads == 2  # the first write was refused; the second read saw AUTH_B
    assert new.open(stored_key(firestore_client, bot_id), where=f"{bot_id}/42", field="auth_key") == AUTH_B


# -- sealed entity fields and blind-index lookups ------------------------------------------------


def test_pii_is_sealed_and_found_lazily(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    s = make(firestore_client, bot_id, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    assert s.flush(10)
    s.close()
    entities = doc(firestore_client, bot_id).collection("entities")
    stored = {d.id: d.to_dict() for d in entities.stream()}
    assert set(stored) == {"501", "502", "503"}
    text = repr(stored)
    for value in [*PLAINTEXT, "AliceW"]:
        assert value not in text
    alice = stored["501"]
    assert alice["hash"] == 501 * 11
    assert is_sealed(alice["username"]) and is_sealed(alice["phone"]) and is_sealed(alice["name"])
    assert alice["username_bi"] == old.blind_index("alicew", where=f"{bot_id}/42", field="username")
    assert stored["503"]["username"] is None and stored["503"]["username_bi"] is None

    # A fresh session has nothing in memory: each lookup is one lazy Firestore query.
    fresh = open_session(firestore_client, bot_id, cipher=old, encrypt_pii=True)
    assert not fresh._entities
    assert fresh.get_input_entity("@AliceW") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("t.me/alicew") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("+1 555 000 1111") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("Bob") == types.InputPeerUser(502, 502 * 11)
    assert fresh.get_input_entity(503) == types.InputPeerUser(503, 503 * 11)
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity("@nobody_here")
    # Opened values are in memory now, as plaintext, for the hot path.
    assert decode(fresh._entities[501]) == (501 * 11, "alicew", "15550001111", "Alice Wonder")
    # Export opens them too.
    rows = {r.id: r for r in open_session(firestore_client, bot_id, cipher=old, encrypt_pii=True).iter_entities()}
    assert (rows[502].username, rows[502].phone, rows[502].name) == ("bob_b", "447700900123", "Bob")


def test_lookups_find_old_key_and_plaintext_rows(
    firestore_client: Any, bot_id: str, old: SessionCipher, new: SessionCipher
) -> None:
    # Alice sealed under the old key; Bob written in plaintext before encrypt_pii was on.
    s = make(firestore_client, bot_id, cipher=old, encrypt_pii=True)
    s.process_entities([PEOPLE.users[0]])
    s.close()
    p = open_session(firestore_client, bot_id, cipher=old)
    p.process_entities([PEOPLE.users[1]])
    p.close()
    bob = doc(firestore_client, bot_id).collection("entities").document("502").get().to_dict()
    assert bob["username"] == "bob_b"

    fresh = open_session(firestore_client, bot_id, cipher=new, encrypt_pii=True)
    assert fresh.get_input_entity("alicew") == types.InputPeerUser(501, 501 * 11)
    assert fresh.get_input_entity("@bob_b") == types.InputPeerUser(502, 502 * 11)
    assert fresh.get_input_entity("+447700900123") == types.InputPeerUser(502, 502 * 11)
    # Re-seeing Bob with a new username writes his row sealed, under the new key.
    fresh.process_entities([person(502, "bob_new", "447700900123", "Bob")])
    assert fresh.flush(10)
    bob = doc(firestore_client, bot_id).collection("entities").document("502").get().to_dict()
    assert new.sealed_with(bob["username"]) == new.key_id
    assert "bob_new" not in repr(bob)
    assert open_session(firestore_client, bot_id, cipher=new, encrypt_pii=True).get_input_entity(
        "bob_new"
    ) == types.InputPeerUser(502, 502 * 11)


def test_entity_field_copied_between_entities_is_a_miss(
    firestore_client: Any, bot_id: str, old: SessionCipher, caplog: pytest.LogCaptureFixture
) -> None:
    s = make(firestore_client, bot_id, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.close()
    entities = doc(firestore_client, bot_id).collection("entities")
    alice = entities.document("501").get().to_dict()
    entities.document("502").update({"username": alice["username"], "username_bi": alice["username_bi"]})
    before = raw(entities.document("502"))
    fresh = open_session(firestore_client, bot_id, cipher=old, encrypt_pii=True)
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity(502)
    assert "SessionDecryptionError" in caplog.text
    assert raw(entities.document("502")) == before
    with pytest.raises(SessionDecryptionError, match="entities/502/username"):
        list(fresh.iter_entities())


def test_encrypt_pii_needs_a_cipher(firestore_client: Any, bot_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_session(firestore_client, bot_id, encrypt_pii=True)
    assert info.value.variable == "encrypt_pii"
    assert raw(doc(firestore_client, bot_id)) == (None, None)


def test_cipher_without_encrypt_pii_keeps_entities_plaintext(
    firestore_client: Any, bot_id: str, old: SessionCipher
) -> None:
    s = make(firestore_client, bot_id, cipher=old)
    s.process_entities(PEOPLE)
    s.close()
    alice = doc(firestore_client, bot_id).collection("entities").document("501").get().to_dict()
    assert alice["username"] == "alicew" and "username_bi" not in alice
    assert is_sealed(stored_key(firestore_client, bot_id))


# -- nothing secret in logs or errors ---------------------------------------------------------------


@pytest.fixture
def root_debug() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.setLevel(level)


def test_no_secret_in_logs_or_errors(
    firestore_client: Any,
    bot_id: str,
    old: SessionCipher,
    new: SessionCipher,
    caplog: pytest.LogCaptureFixture,
    root_debug: None,
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = [repr(old), repr(new), str(old)]
    # Plaintext first, then sealed, rotated, re-sealed on save, PII, lookups.
    make(firestore_client, bot_id, "1", AUTH_A).close()
    s = open_session(firestore_client, bot_id, "1", cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.save()
    s.close()
    texts.append(repr(s))
    rotate_firestore_sessions(firestore_client, bot_id, new, encrypt_pii=True)
    r = open_session(firestore_client, bot_id, "1", cipher=new, encrypt_pii=True)
    r.get_input_entity("@alicew")
    r.close()
    texts.append(repr(r))
    make(firestore_client, bot_id, "2", AUTH_B, cipher=old).close()
    # Every failure: no key, wrong key, tampered, swapped, bad configuration.
    tampered = bytearray(stored_key(firestore_client, bot_id, "2"))
    tampered[-1] ^= 0x80
    failures: list[tuple[str, dict[str, Any]]] = [
        ("1", {}),
        ("1", {"cipher": SessionCipher(bytes(32))}),
        ("2", {"cipher": SessionCipher(KEY_NEW)}),
    ]
    for uid, kw in failures:
        with pytest.raises(SessionDecryptionError) as info:
            open_session(firestore_client, bot_id, uid, **kw)
        texts += [str(info.value), repr(info.value)]
    doc(firestore_client, bot_id, "2").update({"auth_key": bytes(tampered)})
    with pytest.raises(SessionDecryptionError) as info:
        open_session(firestore_client, bot_id, "2", cipher=old)
    texts += [str(info.value), repr(info.value)]
    with pytest.raises(SessionRotationError) as rotation:
        rotate_firestore_sessions(firestore_client, bot_id, new)
    texts += [str(rotation.value), repr(rotation.value)]
    with pytest.raises(ConfigError) as cfg:
        SessionCipher.from_env({"SESSION_ENCRYPTION_KEY": KEY_OLD[:-4]})
    texts.append(str(cfg.value))

    assert {r.levelno for r in caplog.records} >= {logging.INFO, logging.WARNING}
    assert any(r.name.startswith("telethon_firestore_session") for r in caplog.records)
    text = caplog.text + "\n".join(texts)
    secrets = {"key_old": RAW_OLD, "key_new": RAW_NEW, "auth_a": AUTH_A, "auth_b": AUTH_B}
    # Report which secret leaked in which form, never the secret itself.
    assert not find_leaks(text, secrets, {"key_old": KEY_OLD, "key_new": KEY_NEW})
