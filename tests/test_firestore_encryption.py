"""Encryption at rest, what is specific to Firestore (real emulator): the documents' layout of
sealed fields and their ``{field}_bi`` blind indexes, and rotation racing a concurrent write.

Everything both stores must do (sealed auth keys, failures that touch nothing, rotation,
plaintext-to-sealed migration, blind-index lookups, no secret in logs or errors) is the
encryption contract (``telethon_firestore_session.testing.EncryptionContract``), run over
FirestoreSession in tests/contract."""

from __future__ import annotations

from typing import Any

import pytest
from telethon.crypto import AuthKey

from telethon_firestore_session import FirestoreSession
from telethon_firestore_session.crypto import SessionCipher, is_sealed
from telethon_firestore_session.firestore import ENTITIES, session_document
from telethon_firestore_session.ids import SessionKey
from telethon_firestore_session.testing.cases import AUTH_A, AUTH_B
from telethon_firestore_session.testing.encryption import PEOPLE

pytestmark = pytest.mark.firestore


def make(client: Any, bot_id: str, auth: bytes = AUTH_A, **kw: Any) -> FirestoreSession:
    s = FirestoreSession("42", bot_id=bot_id, client=client, **kw)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(auth)
    s.save()
    return s


def test_sealed_fields_sit_next_to_their_blind_indexes(firestore_client: Any, bot_id: str, old: SessionCipher) -> None:
    s = make(firestore_client, bot_id, cipher=old, encrypt_pii=True)
    s.process_entities(PEOPLE)
    s.close()
    entities = session_document(firestore_client, SessionKey(bot_id, "42")).collection(ENTITIES)
    alice = entities.document("501").get().to_dict()
    fields = ("username", "phone", "name")
    assert set(alice) == {"hash", "date", *fields, *(f"{f}_bi" for f in fields)}
    for f in fields:
        assert is_sealed(alice[f]) and isinstance(alice[f"{f}_bi"], str)
    assert alice["username_bi"] == old.blind_index("alicew", where=f"{bot_id}/42", field="username")
    carol = entities.document("503").get().to_dict()
    assert carol["username"] is None and carol["username_bi"] is None

    # Without encrypt_pii the fields are plaintext and there is no blind index at all.
    p = make(firestore_client, bot_id, cipher=old)
    p.process_entities([PEOPLE.users[1]])
    p.close()
    bob = entities.document("502").get().to_dict()
    assert set(bob) == {"hash", "date", *fields} and bob["username"] == "bob_b"


def test_rotation_does_not_overwrite_a_concurrent_write(
    firestore_client: Any, bot_id: str, old: SessionCipher, new: SessionCipher
) -> None:
    """The store re-reads a document that changed between its read and its write."""
    make(firestore_client, bot_id, cipher=old).close()
    store = FirestoreSession("42", bot_id=bot_id, client=firestore_client, cipher=new).store

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
    stored = session_document(firestore_client, SessionKey(bot_id, "42")).get().to_dict()["auth_key"]
    assert new.open(stored, where=f"{bot_id}/42", field="auth_key") == AUTH_B
