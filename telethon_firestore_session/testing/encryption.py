"""The encryption contract: sealed auth keys and entity fields at rest, the same rules in every store.

:class:`EncryptionContract` runs on an :class:`EncryptionBackend`: a store that takes
``cipher=`` and ``encrypt_pii=`` and shows the contract what only it knows (the raw stored
auth key and entity fields, a snapshot of everything it stores to prove "untouched",
rotation of one or all sessions). The contract then checks what any store must do:
keys sealed and bound to their session, every failure (no key, wrong key, tampered,
cut short, copied from another session) raised before anything is written, rotation,
plaintext-to-sealed migration on the next ``save()``, blind-index lookups, and no secret
in any log record, error or repr::

    @pytest.fixture
    def encryption_backend(tmp_path):
        with MyBackend(tmp_path) as backend:  # closes every session it made
            yield backend

    class TestMyEncryption(EncryptionContract):
        pass
"""

from __future__ import annotations

import abc
import base64
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest
from telethon import TelegramClient
from telethon.crypto import AuthKey
from telethon.sessions.abstract import Session
from telethon.tl import types

from telethon_firestore_session.crypto import OVERHEAD, SessionCipher, is_sealed
from telethon_firestore_session.errors import (
    ConfigError,
    SessionCorruptError,
    SessionDecryptionError,
    SessionRotationError,
)

from .cases import AUTH_A, AUTH_B, Deviation, expect_deviation, key_bytes
from .leaks import assert_absent, debug_logging, find_leaks

__all__ = ["EncryptionBackend", "EncryptionContract", "StoredEntity", "StoredField"]

# Encryption keys (raw and as SESSION_ENCRYPTION_KEY text).
RAW_OLD = bytes(range(32))
RAW_NEW = bytes(range(200, 232))
KEY_OLD = base64.urlsafe_b64encode(RAW_OLD).decode()
KEY_NEW = base64.urlsafe_b64encode(RAW_NEW).decode()
#: A key no test configures.
RAW_STRANGER = bytes(range(50, 82))


def person(uid: int, username: str | None, phone: str | None, first: str, last: str | None = None) -> types.User:
    """A user with every field that ``encrypt_pii`` seals."""
    return types.User(uid, access_hash=uid * 11, username=username, phone=phone, first_name=first, last_name=last)


#: Three people whose usernames, phones and names must never be stored in plaintext when sealed.
PEOPLE = types.contacts.ResolvedPeer(
    types.PeerUser(501),
    [],
    [
        person(501, "AliceW", "15550001111", "Alice", "Wonder"),
        person(502, "bob_b", "447700900123", "Bob"),
        person(503, None, "4915112345678", "Carol", "Kings"),
    ],
)
#: What of :data:`PEOPLE` must not be readable in sealed storage.
PLAINTEXT = ["alicew", "AliceW", "15550001111", "Alice Wonder", "bob_b", "447700900123", "4915112345678", "Carol Kings"]


def peer(uid: int) -> types.InputPeerUser:
    """The input peer of one of :data:`PEOPLE`."""
    return types.InputPeerUser(uid, uid * 11)


@dataclasses.dataclass(frozen=True)
class StoredField:
    """One entity field as stored.

    :param value: sealed bytes, plaintext or ``None``.
    :param index: its blind index, if sealed.
    """

    value: Any
    index: str | None = None


@dataclasses.dataclass(frozen=True)
class StoredEntity:
    """One stored entity.

    :param hash: its access hash.
    :param date: the unix time it was last changed.
    :param fields: its sealable fields by name (``username``, ``phone``, ``name``).
    """

    hash: int
    date: int
    fields: Mapping[str, StoredField]


class EncryptionBackend(abc.ABC):
    """What :class:`EncryptionContract` needs from a store that seals: sessions, and a look at what is stored.

    Sessions are addressed by user id under :attr:`bot_id` (a second bot is
    ``bot_id + "-other"``); a sealed value is bound to ``f"{bot_id}/{user_id}"``.
    The backend closes every session it made on :meth:`cleanup` (e.g. as a context manager).
    """

    name: ClassVar[str] = "?"
    #: Known deviations, by contract test name without ``test_`` (a strict ``xfail`` each).
    deviations: ClassVar[Mapping[str, Deviation]] = {}
    #: Libraries the store talks through whose DEBUG records the no-secret test must see (so it can fail).
    debug_loggers: ClassVar[tuple[str, ...]] = ()
    #: What the store keeps as the auth key of a session without one.
    no_auth_key: ClassVar[bytes | None] = None
    bot_id: str

    @abc.abstractmethod
    def session(self, user_id: str = "42", *, bot_id: str | None = None, **options: Any) -> Session:
        """Construct a session (``options``: ``cipher``, ``encrypt_pii``), closed again by :meth:`cleanup`.

        :param user_id: the session's user.
        :param bot_id: its bot; default :attr:`bot_id`.
        """

    @abc.abstractmethod
    def cleanup(self) -> None:
        """Close every session :meth:`session` made."""

    @abc.abstractmethod
    def where(self, user_id: str, bot_id: str | None = None) -> str:
        """How errors name this session's storage (a path, a document path).

        :param user_id: the session's user.
        :param bot_id: its bot; default :attr:`bot_id`.
        """

    @abc.abstractmethod
    def stored_auth_key(self, user_id: str, bot_id: str | None = None) -> Any:
        """The auth key exactly as stored.

        :param user_id: the session's user.
        :param bot_id: its bot; default :attr:`bot_id`.
        """

    @abc.abstractmethod
    def replace_auth_key(self, user_id: str, value: Any, bot_id: str | None = None) -> None:
        """Store ``value`` as the auth key, as another program with access to the storage would.

        :param user_id: the session's user.
        :param value: what to store.
        :param bot_id: its bot; default :attr:`bot_id`.
        """

    @abc.abstractmethod
    def stored_entities(self, user_id: str) -> dict[int, StoredEntity]:
        """Every stored entity of the session, by the id it is stored under.

        :param user_id: the session's user.
        """

    @abc.abstractmethod
    def replace_entity_field(self, user_id: str, entity_id: int, field: str, value: StoredField) -> None:
        """Store ``value`` (and its blind index) as one field of one entity, from outside.

        :param user_id: the session's user.
        :param entity_id: the id the entity is stored under.
        :param field: ``"username"``, ``"phone"`` or ``"name"``.
        :param value: what to store.
        """

    @abc.abstractmethod
    def snapshot(self, *user_ids: str) -> Any:
        """Everything stored for ``user_ids`` (or for every session, and any shared record), comparable with ``==``.

        Equal snapshots mean not one stored byte changed.
        """

    @abc.abstractmethod
    def stored_bytes(self, user_id: str) -> bytes:
        """Everything stored for a session, as bytes a reader of the storage sees (to look for plaintext).

        :param user_id: the session's user.
        """

    @abc.abstractmethod
    def rotate(self, cipher: SessionCipher, *, user_id: str | None = None, encrypt_pii: bool = False) -> int:
        """Re-seal one session or every session of :attr:`bot_id` with ``cipher``; how many were re-sealed.

        :param cipher: the cipher with the current key and the old ones.
        :param user_id: only this session; default every session.
        :param encrypt_pii: also seal plaintext entity fields.
        """


def old_cipher() -> SessionCipher:
    """A cipher with only the old key."""
    return SessionCipher(KEY_OLD)


def new_cipher() -> SessionCipher:
    """The rotated cipher: the new key, still opening the old one."""
    return SessionCipher(KEY_NEW, [KEY_OLD])


def make(backend: EncryptionBackend, uid: str = "42", auth: bytes = AUTH_A, **options: Any) -> Session:
    """A session with a DC and ``auth`` saved."""
    s = backend.session(uid, **options)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(auth)
    s.save()
    return s


def _context(backend: EncryptionBackend, uid: str = "42") -> str:
    """What a value sealed for a session is bound to."""
    return f"{backend.bot_id}/{uid}"


def _copy_sealed_fields(b: EncryptionBackend) -> None:
    """PEOPLE sealed in sessions 42 and 43; then in 42, Alice's sealed username (with its blind index) copied
    onto Bob's record, and Carol's fields replaced by the same fields from 43 (bound to another session)."""
    for uid in ("42", "43"):
        s = make(b, uid, cipher=old_cipher(), encrypt_pii=True)
        s.process_entities(PEOPLE)
        s.close()
    mine, theirs = b.stored_entities("42"), b.stored_entities("43")
    b.replace_entity_field("42", 502, "username", mine[501].fields["username"])
    for f, value in theirs[503].fields.items():
        b.replace_entity_field("42", 503, f, value)


class EncryptionContract:
    """What a store that seals must do. Needs an ``encryption_backend`` fixture (an :class:`EncryptionBackend`)."""

    # -- the auth key ------------------------------------------------------------------------

    def test_auth_key_is_sealed_and_opens(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        s = make(b, cipher=old)
        sealed = b.stored_auth_key("42")
        assert is_sealed(sealed) and len(sealed) == 256 + OVERHEAD
        assert old.sealed_with(sealed) == old.key_id
        assert old.open(sealed, where=_context(b), field="auth_key") == AUTH_A  # bound to bot_id/user_id/auth_key
        assert_absent(b.stored_bytes("42"), auth_key=AUTH_A)  # while open (a journal included)
        s.takeout_id = 7
        s.save()
        second = b.stored_auth_key("42")
        assert second != sealed  # a fresh nonce for every write
        assert old.open(second, where=_context(b), field="auth_key") == AUTH_A
        s.close()
        assert_absent(b.stored_bytes("42"), auth_key=AUTH_A)

        again = b.session(cipher=old)
        assert key_bytes(again) == AUTH_A
        assert (again.dc_id, again.server_address, again.port, again.takeout_id) == (2, "149.154.167.51", 443, 7)
        assert "auth_key=set" in repr(again) and old.key_id not in repr(again)
        # A real client builds its sender from the opened key (Telethon has no public accessor for it).
        client = TelegramClient(again, 12345, "0123456789abcdef0123456789abcdef")
        assert client._sender.auth_key.key == AUTH_A

    def test_cleared_auth_key_is_stored_as_no_key(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        s = make(b, cipher=old)
        s.auth_key = None
        s.save()
        s.close()
        assert b.stored_auth_key("42") == b.no_auth_key
        assert b.session(cipher=old).auth_key is None

    def test_no_key_configured_for_a_sealed_session_touches_nothing(
        self, encryption_backend: EncryptionBackend
    ) -> None:
        b, old = encryption_backend, old_cipher()
        make(b, cipher=old).close()
        before = b.snapshot()
        with pytest.raises(SessionDecryptionError) as info:
            b.session()
        assert info.value.field == "auth_key"
        assert b.where("42") in info.value.where
        assert "no encryption key is configured" in str(info.value)
        assert b.snapshot() == before
        # The failed open released what it held, and the session never started empty: the key still opens it.
        assert key_bytes(b.session(cipher=old)) == AUTH_A

    def test_wrong_key_touches_nothing(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        make(b, cipher=old).close()
        before = b.snapshot()
        for wrong in (SessionCipher(KEY_NEW), SessionCipher(KEY_NEW, [bytes(32)])):
            with pytest.raises(SessionDecryptionError) as info:
                b.session(cipher=wrong, encrypt_pii=True)  # would set up sealed fields if it got that far
            assert old.key_id in str(info.value) and "not configured" in str(info.value)
            assert b.snapshot() == before
        assert key_bytes(b.session(cipher=old)) == AUTH_A

    def test_tampered_auth_key_touches_nothing(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        make(b, cipher=old).close()
        sealed = b.stored_auth_key("42")
        for position in (100, 10, -1):  # ciphertext, key id, tag
            tampered = bytearray(sealed)
            tampered[position] ^= 0x01
            b.replace_auth_key("42", bytes(tampered))
            before = b.snapshot()
            with pytest.raises(SessionDecryptionError) as info:
                b.session(cipher=old)
            assert info.value.field == "auth_key", position
            if position != 10:  # a changed key id names a key that is not configured
                assert "modified or belongs to another session" in info.value.reason, position
            assert b.snapshot() == before
        b.replace_auth_key("42", sealed)
        assert key_bytes(b.session(cipher=old)) == AUTH_A

    def test_auth_key_of_the_wrong_length_is_refused_and_never_overwritten(
        self, encryption_backend: EncryptionBackend
    ) -> None:
        """Neither 256 bytes nor an envelope (cut short, too long, header damaged): never read as a key."""
        b, old = encryption_backend, old_cipher()
        make(b, cipher=old).close()
        sealed = b.stored_auth_key("42")
        for damaged in (AUTH_A[:100], AUTH_A + b"\x00", sealed[:-1], b"XYZ" + sealed[3:]):
            b.replace_auth_key("42", damaged)
            before = b.snapshot()
            with pytest.raises(SessionDecryptionError, match="modified") as info:
                b.session(cipher=old)
            assert info.value.field == "auth_key"
            assert b.snapshot() == before
            if not is_sealed(damaged):
                with pytest.raises(SessionCorruptError, match="not 256"):
                    b.session()  # without a key, a value that is no envelope is no auth key either
                assert b.snapshot() == before

    def test_auth_key_copied_from_another_session_does_not_open(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        other_bot = b.bot_id + "-other"
        make(b, "1001", AUTH_A, cipher=old).close()
        make(b, "1002", AUTH_B, cipher=old).close()
        make(b, "1001", AUTH_B, cipher=old, bot_id=other_bot).close()
        alice = b.stored_auth_key("1001")
        for bot, uid in ((b.bot_id, "1002"), (other_bot, "1001")):
            b.replace_auth_key(uid, alice, bot)
            before = b.snapshot()
            with pytest.raises(SessionDecryptionError, match="another session"):
                b.session(uid, bot_id=bot, cipher=old)
            assert b.snapshot() == before
        assert key_bytes(b.session("1001", cipher=old)) == AUTH_A  # the owner is unaffected

    def test_plaintext_key_that_looks_like_an_envelope(self, encryption_backend: EncryptionBackend) -> None:
        b = encryption_backend
        odd = b"TFS\x01" + AUTH_A[4:]
        make(b, auth=odd).close()
        assert key_bytes(b.session(cipher=old_cipher())) == odd

    # -- turning encryption on, and rotation -------------------------------------------------

    def test_old_key_opens_and_next_save_reseals(self, encryption_backend: EncryptionBackend) -> None:
        b, old, new = encryption_backend, old_cipher(), new_cipher()
        make(b, cipher=old).close()
        before = b.snapshot()
        s = b.session(cipher=new)
        assert key_bytes(s) == AUTH_A
        assert b.snapshot() == before  # opening writes nothing
        s.save()  # nothing changed, but the header is written again with the current key
        sealed = b.stored_auth_key("42")
        assert new.sealed_with(sealed) == new.key_id
        s.save()
        assert b.stored_auth_key("42") == sealed  # ... once
        s.close()
        assert key_bytes(b.session(cipher=SessionCipher(KEY_NEW))) == AUTH_A  # the old key can go now

    def test_plaintext_session_is_sealed_on_next_save(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        plain = make(b)  # written before encryption was turned on
        plain.process_entities(PEOPLE)
        plain.close()
        assert b.stored_auth_key("42") == AUTH_A

        s = b.session(cipher=old)
        assert key_bytes(s) == AUTH_A
        assert b.stored_auth_key("42") == AUTH_A  # not until save()
        assert s.get_input_entity("@alicew") == peer(501)  # plaintext rows are still found
        s.save()  # nothing changed, but the header is written again, sealed
        sealed = b.stored_auth_key("42")
        assert is_sealed(sealed) and old.sealed_with(sealed) == old.key_id
        assert_absent(b.stored_bytes("42"), auth_key=AUTH_A)  # the plaintext key left the storage at once
        s.save()
        assert b.stored_auth_key("42") == sealed  # ... once
        s.close()
        assert_absent(b.stored_bytes("42"), auth_key=AUTH_A)
        with pytest.raises(SessionDecryptionError):
            b.session()
        assert key_bytes(b.session(cipher=old)) == AUTH_A

    def test_rotate_every_session(self, encryption_backend: EncryptionBackend) -> None:
        b, old, new = encryption_backend, old_cipher(), new_cipher()
        make(b, "1", AUTH_A, cipher=old).close()
        make(b, "2", AUTH_B).close()  # plaintext
        s3 = make(b, "3", AUTH_B, cipher=old, encrypt_pii=True)
        s3.process_entities(PEOPLE)
        s3.close()
        before_3 = b.stored_entities("3")

        assert b.rotate(new) == 3
        for uid in ("1", "2", "3"):
            assert new.sealed_with(b.stored_auth_key(uid)) == new.key_id
        after_3 = b.stored_entities("3")
        assert after_3.keys() == before_3.keys() == {501, 502, 503}
        for eid, entity in after_3.items():
            was = before_3[eid]
            assert (entity.hash, entity.date) == (was.hash, was.date)
            for f, stored in entity.fields.items():
                if was.fields[f].value is None:
                    assert stored == StoredField(None), (eid, f)
                else:
                    assert new.sealed_with(stored.value) == new.key_id, (eid, f)
                    assert stored.index is not None and stored.index != was.fields[f].index, (eid, f)
        # Everything opens with the new key alone, lookups included.
        fresh = b.session("3", cipher=SessionCipher(KEY_NEW), encrypt_pii=True)
        assert key_bytes(fresh) == AUTH_B
        assert fresh.get_input_entity("@alicew") == peer(501)
        assert fresh.get_input_entity("+44 7700 900123") == peer(502)
        fresh.close()
        # Idempotent: a second run finds nothing to do and writes nothing.
        before = b.snapshot()
        assert b.rotate(new) == 0
        assert b.snapshot() == before

    def test_rotate_one_session_and_seal_plaintext_pii(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        s = make(b, "7", AUTH_A)
        s.process_entities(PEOPLE)
        s.close()
        make(b, "8", AUTH_B).close()
        other = b.snapshot("8")
        assert [v for v in PLAINTEXT if v.encode() in b.stored_bytes("7")]  # the check below can fail

        assert b.rotate(old, user_id="7", encrypt_pii=True) == 1
        assert b.snapshot("8") == other  # another session: untouched
        assert [v for v in PLAINTEXT if v.encode() in b.stored_bytes("7")] == []  # not even in free space
        assert_absent(b.stored_bytes("7"), auth_key=AUTH_A)
        fresh = b.session("7", cipher=old, encrypt_pii=True)
        assert fresh.get_input_entity("Carol Kings") == peer(503)
        assert fresh.get_input_entity("+4915112345678") == peer(503)
        fresh.close()
        # A user without a stored session: nothing to do, and nothing is created.
        before = b.snapshot()
        assert b.rotate(old, user_id="nobody") == 0
        assert b.snapshot() == before

    def test_rotate_skips_and_reports_a_session_it_cannot_open(self, encryption_backend: EncryptionBackend) -> None:
        b, new = encryption_backend, new_cipher()
        make(b, "1", AUTH_A, cipher=SessionCipher(RAW_STRANGER)).close()  # a key we do not have
        make(b, "2", AUTH_B).close()
        before = b.snapshot("1")
        with pytest.raises(SessionRotationError) as info:
            b.rotate(new)
        assert info.value.rotated == 1
        [failure] = info.value.failures
        assert isinstance(failure, SessionDecryptionError) and info.value.__cause__ is failure
        assert b.where("1") in failure.where and b.where("1") in str(info.value)
        assert b.snapshot("1") == before
        assert new.sealed_with(b.stored_auth_key("2")) == new.key_id

    # -- sealed entity fields and blind-index lookups ------------------------------------------

    def test_pii_is_sealed_and_found(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        s = make(b, cipher=old, encrypt_pii=True)
        s.process_entities(PEOPLE)
        assert s.flush(10)
        assert [v for v in PLAINTEXT if v.encode() in b.stored_bytes("42")] == []  # while open (a journal included)
        s.close()
        assert [v for v in PLAINTEXT if v.encode() in b.stored_bytes("42")] == []
        stored = b.stored_entities("42")
        assert set(stored) == {501, 502, 503}
        alice = stored[501]
        assert alice.hash == 501 * 11
        assert all(is_sealed(f.value) for f in alice.fields.values())
        for f, plain in (("username", "alicew"), ("phone", "15550001111"), ("name", "Alice Wonder")):
            assert alice.fields[f].index == old.blind_index(plain, where=_context(b), field=f)
            assert old.open_text(alice.fields[f].value, where=_context(b), field=f"entities/501/{f}") == plain
        assert stored[503].fields["username"] == StoredField(None)

        for _ in range(2):  # each from a session that has nothing in memory yet
            fresh = b.session(cipher=old, encrypt_pii=True)
            for key in ("@AliceW", "t.me/alicew", "ALICEW", "+1 (555) 000-1111", "+1 555 000 1111", "Alice Wonder"):
                assert fresh.get_input_entity(key) == peer(501), key
            assert fresh.get_input_entity("447700900123") == peer(502)
            assert fresh.get_input_entity("Bob") == peer(502)
            assert fresh.get_input_entity("Carol Kings") == peer(503)
            assert fresh.get_input_entity(503) == peer(503)
            for missing in ("@nobody_here", "+1 555 999 9999", "Nobody Known", "Bob "):
                with pytest.raises(ValueError, match="Could not find"):
                    fresh.get_input_entity(missing)
            fresh.close()
        rows = {r.id: r for r in b.session(cipher=old, encrypt_pii=True).iter_entities()}  # export opens them too
        assert (rows[502].username, rows[502].phone, rows[502].name) == ("bob_b", "447700900123", "Bob")

    def test_lookups_find_old_key_and_plaintext_rows_and_seal_them_on_write(
        self, encryption_backend: EncryptionBackend
    ) -> None:
        b, old, new = encryption_backend, old_cipher(), new_cipher()
        # Alice sealed under the old key; Bob written in plaintext before encrypt_pii was on.
        s = make(b, cipher=old, encrypt_pii=True)
        s.process_entities([PEOPLE.users[0]])
        s.close()
        p = b.session(cipher=old)
        p.process_entities([PEOPLE.users[1]])
        p.close()
        assert b.stored_entities("42")[502].fields["username"] == StoredField("bob_b")

        fresh = b.session(cipher=new, encrypt_pii=True)
        assert fresh.get_input_entity("alicew") == peer(501)
        assert fresh.get_input_entity("@bob_b") == peer(502)
        assert fresh.get_input_entity("+447700900123") == peer(502)
        # Re-seeing Bob with a new username writes his row sealed, under the new key.
        fresh.process_entities([person(502, "bob_new", "447700900123", "Bob")])
        assert fresh.flush(10)
        fresh.close()
        assert new.sealed_with(b.stored_entities("42")[502].fields["username"].value) == new.key_id
        assert [v for v in ("bob_new", "bob_b", "447700900123") if v.encode() in b.stored_bytes("42")] == []
        assert b.session(cipher=new, encrypt_pii=True).get_input_entity("bob_new") == peer(502)

    def test_entity_field_copied_between_entities_or_sessions_is_a_miss(
        self, encryption_backend: EncryptionBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        b, old = encryption_backend, old_cipher()
        _copy_sealed_fields(b)
        before = b.snapshot()
        fresh = b.session(cipher=old, encrypt_pii=True)
        with pytest.raises(ValueError, match="Could not find"):
            fresh.get_input_entity(502)
        with pytest.raises(ValueError, match="Could not find"):
            fresh.get_input_entity("+4915112345678")
        assert "SessionDecryptionError" in caplog.text
        with pytest.raises(SessionDecryptionError, match="entities/502/username"):
            list(fresh.iter_entities())
        fresh.close()
        assert b.snapshot() == before

    def test_a_copied_field_never_hides_the_real_owner(
        self, encryption_backend: EncryptionBackend, request: pytest.FixtureRequest
    ) -> None:
        b = encryption_backend
        expect_deviation(request, b, "a_copied_field_never_hides_the_real_owner")
        _copy_sealed_fields(b)
        fresh = b.session(cipher=old_cipher(), encrypt_pii=True)
        assert fresh.get_input_entity("alicew") == peer(501)  # Bob's record has her index too, but does not open

    def test_blind_index_changed_outside_is_refused(
        self, encryption_backend: EncryptionBackend, request: pytest.FixtureRequest
    ) -> None:
        b, old = encryption_backend, old_cipher()
        expect_deviation(request, b, "blind_index_changed_outside_is_refused")
        s = make(b, cipher=old, encrypt_pii=True)
        s.process_entities(PEOPLE)
        s.close()
        stored = b.stored_entities("42")
        alice, bob = stored[501].fields["username"], stored[502].fields["username"]
        b.replace_entity_field("42", 501, "username", StoredField(alice.value, bob.index))  # Alice claims Bob's index
        fresh = b.session(cipher=old, encrypt_pii=True)
        assert fresh.get_input_entity("bob_b") == peer(502)  # never Alice
        with pytest.raises(ValueError, match="Could not find"):
            fresh.get_input_entity(501)
        with pytest.raises(SessionDecryptionError, match=r"entities/501/username.*changed outside"):
            list(fresh.iter_entities())

    def test_encrypt_pii_needs_a_cipher(self, encryption_backend: EncryptionBackend) -> None:
        b = encryption_backend
        before = b.snapshot()
        with pytest.raises(ConfigError) as info:
            b.session(encrypt_pii=True)
        assert info.value.variable == "encrypt_pii"
        assert b.snapshot() == before

    def test_cipher_without_encrypt_pii_keeps_entities_plaintext(self, encryption_backend: EncryptionBackend) -> None:
        b, old = encryption_backend, old_cipher()
        s = make(b, cipher=old)
        s.process_entities(PEOPLE)
        s.close()
        alice = b.stored_entities("42")[501]
        assert alice.fields["username"] == StoredField("alicew")
        assert str(alice.fields["phone"].value) == "15550001111"  # a store may keep a phone as a number
        assert alice.fields["name"] == StoredField("Alice Wonder")
        assert is_sealed(b.stored_auth_key("42"))

    # -- nothing secret in logs or errors --------------------------------------------------------

    def test_no_secret_in_logs_or_errors(
        self, encryption_backend: EncryptionBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        b = encryption_backend
        with debug_logging():
            caplog.set_level(logging.DEBUG)
            texts = _every_path(b)
        assert {rec.levelno for rec in caplog.records} >= {logging.INFO, logging.WARNING}
        for library in b.debug_loggers:
            assert any(r.name.startswith(library) and r.levelno == logging.DEBUG for r in caplog.records), library
        assert any(rec.name.startswith("telethon_firestore_session") for rec in caplog.records)
        text = caplog.text + "\n".join(texts) + "\n".join(str(rec.args) for rec in caplog.records)
        secrets = {"key_old": RAW_OLD, "key_new": RAW_NEW, "auth_a": AUTH_A, "auth_b": AUTH_B}
        # Report which secret leaked in which form, never the secret itself.
        assert find_leaks(text, secrets, {"key_old": KEY_OLD, "key_new": KEY_NEW}) == []


def _every_path(b: EncryptionBackend) -> list[str]:
    """Plaintext first, then sealed on save, PII, lookups, rotation, re-sealed; then every failure.

    Returns the reprs and error messages seen on the way.
    """
    old, new = old_cipher(), new_cipher()
    texts: list[str] = [repr(old), repr(new), str(old)]

    def failing(fn: Callable[[], Any], kind: type[Exception] = SessionDecryptionError) -> None:
        with pytest.raises(kind) as info:
            fn()
        texts.extend([str(info.value), repr(info.value), repr(info.value.args)])
        texts.extend(f"{failure} {failure!r}" for failure in getattr(info.value, "failures", ()))

    plain = make(b, "1", AUTH_A)
    plain.process_entities(PEOPLE)
    plain.close()
    assert "auth_key=set" in repr(plain)
    s = b.session("1", cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.save()
    s.close()
    b.rotate(new, encrypt_pii=True)
    r = b.session("1", cipher=new, encrypt_pii=True)
    r.get_input_entity("@alicew")
    r.close()
    texts += [repr(plain), repr(s), repr(r)]
    make(b, "2", AUTH_B, cipher=old).close()
    failing(lambda: b.session("1"))
    failing(lambda: b.session("1", cipher=SessionCipher(bytes(32))))
    failing(lambda: b.session("2", cipher=SessionCipher(KEY_NEW)))
    tampered = bytearray(b.stored_auth_key("2"))
    tampered[-1] ^= 0x80
    b.replace_auth_key("2", bytes(tampered))
    failing(lambda: b.session("2", cipher=old))
    failing(lambda: b.rotate(new), SessionRotationError)
    failing(lambda: SessionCipher.from_env({"SESSION_ENCRYPTION_KEY": KEY_OLD[:-4]}), ConfigError)
    return texts
