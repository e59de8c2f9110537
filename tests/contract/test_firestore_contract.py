"""Firestore-level evidence for the contract's write rules: documents, not just counters."""

from __future__ import annotations

from typing import Any

import pytest
from telethon.tl import types

from telethon_firestore_session import FirestoreSession

pytestmark = pytest.mark.firestore


def _user(uid: int, **kw: Any) -> types.User:
    return types.User(uid, access_hash=uid * 3, first_name="N", **kw)


def test_unchanged_entities_leave_their_documents_untouched(firestore_client: Any, bot_id: str) -> None:
    session = FirestoreSession("42", bot_id=bot_id, client=firestore_client)
    seen = [_user(i, username=f"doc{i}") for i in range(1, 11)]
    session.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1), [], seen))
    assert session.flush(10)
    entities = session.document.collection("entities")
    before = {snap.id: snap.update_time for snap in entities.stream()}
    assert len(before) == 10
    writes = session.store.writes

    session.process_entities([_user(i, username=f"doc{i}") for i in range(1, 11)])  # equal copies
    session.process_entities([_user(4, username="doc4renamed")])
    assert session.flush(10)
    after = {snap.id: snap.update_time for snap in entities.stream()}
    assert {k for k in after if after[k] != before[k]} == {"4"}
    assert session.store.writes == writes + 1  # the changed entity: entities alone leave the session document
    session.close()
