"""What is specific to FirestoreSession: layout, schema checks, write-through and
write-behind, the 500-writes limit, deletion, and behaviour when Firestore
stops answering (the real emulator, paused with SIGSTOP)."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.tl import types

from telethon_firestore_session import (
    BackgroundWriter,
    FirestoreSession,
    InvalidSessionIdError,
    SchemaVersionError,
    SessionClosedError,
    SessionCorruptError,
    SessionStoreError,
)
from telethon_firestore_session.core import Changes, EntityRow, SessionHeader
from telethon_firestore_session.crypto import SessionCipher
from telethon_firestore_session.firestore import MAX_WRITES_PER_COMMIT, SCHEMA_VERSION, FirestoreStore
from telethon_firestore_session.firestore.directory import FirestoreDirectory
from telethon_firestore_session.firestore.layout import RPC_RETRY, iter_sessions
from telethon_firestore_session.ids import SessionKey
from tests.emulator import Emulator
from tests.leaks import assert_absent

KEY = bytes(range(256))
UTC = datetime.timezone.utc


def user(uid: int, **kw: Any) -> types.User:
    kw.setdefault("access_hash", uid * 7)
    return types.User(uid, **kw)


def users(n: int, start: int = 1000) -> types.contacts.ResolvedPeer:
    return types.contacts.ResolvedPeer(
        types.PeerUser(start), [], [user(start + i, username=f"u{start + i}", first_name="N") for i in range(n)]
    )


def raw(doc: Any) -> tuple[dict[str, Any] | None, Any]:
    snap = doc.get()
    return (snap.to_dict() if snap.exists else None), (snap.update_time if snap.exists else None)


def open_session(client: Any, bot_id: str, uid: object = "42", **kw: Any) -> FirestoreSession:
    return FirestoreSession(uid, bot_id=bot_id, client=client, **kw)  # type: ignore[arg-type]


@pytest.fixture
def commit_sizes(firestore_client: Any) -> list[int]:
    """The number of writes in each Commit RPC of ``firestore_client``, in order.

    The emulator accepts commits of any size, so the 500-writes limit is checked here,
    where every batch commit and document write becomes one Commit RPC: the client's
    GAPIC layer (no public hook sees a commit's writes). The real method is called.
    """
    api = firestore_client._firestore_api
    real = api.commit
    sizes: list[int] = []

    def commit(*, request: dict[str, Any], **kw: Any) -> Any:
        sizes.append(len(request["writes"]))
        return real(request=request, **kw)

    api.commit = commit
    return sizes


def test_layout_and_write_through(firestore_client: Any, bot_id: str) -> None:
    s = open_session(firestore_client, bot_id)
    assert s.auth_key is None and s.dc_id == 0
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(KEY)
    s.takeout_id = 99
    s.save()
    # Durable when save() returns: another client reads it without any flush.
    data, _ = raw(firestore_client.document(f"bots/{bot_id}/user_sessions/42"))
    assert data is not None
    assert data["schema_version"] == SCHEMA_VERSION
    assert (data["dc_id"], data["server_address"], data["port"], data["takeout_id"]) == (2, "149.154.167.51", 443, 99)
    assert data["auth_key"] == KEY
    assert isinstance(data["created_at"], datetime.datetime)
    assert isinstance(data["last_active_at"], datetime.datetime)
    s.close()

    again = open_session(firestore_client, bot_id)
    assert again.auth_key is not None and again.auth_key.key == KEY
    assert (again.dc_id, again.server_address, again.port, again.takeout_id) == (2, "149.154.167.51", 443, 99)


def test_entities_and_states_are_written_behind(firestore_client: Any, bot_id: str) -> None:
    s = open_session(firestore_client, bot_id)
    s.process_entities(users(3))
    s.set_update_state(0, types.updates.State(10, 20, datetime.datetime(2025, 1, 2, tzinfo=UTC), 30, 0))
    s.set_update_state(777, types.updates.State(5, 0, datetime.datetime(2025, 1, 2, tzinfo=UTC), 0, 0))
    s.cache_file(b"\x01" * 16, 1234, types.InputDocument(55, 66, b"ref"))
    assert s.flush(10)
    base = firestore_client.document(f"bots/{bot_id}/user_sessions/42")
    entity = base.collection("entities").document("1001").get().to_dict()
    assert entity["hash"] == 1001 * 7 and entity["username"] == "u1001" and entity["name"] == "N"
    assert {d.id for d in base.collection("sent_files").stream()} == {"01" * 16 + "-1234-0"}
    states = base.get().to_dict()["update_states"]
    assert states["0"] == {"pts": 10, "qts": 20, "date": 1735776000, "seq": 30}
    assert states["777"]["pts"] == 5
    s.close()

    again = open_session(firestore_client, bot_id)
    assert again.get_update_state(0) == types.updates.State(
        10, 20, datetime.datetime(2025, 1, 2, tzinfo=UTC), 30, unread_count=0
    )
    assert again.get_file(b"\x01" * 16, 1234, types.InputDocument) == types.InputDocument(55, 66, b"")
    assert again.get_input_entity("u1002") == types.InputPeerUser(1002, 1002 * 7)


def test_commits_never_exceed_500_writes(
    firestore_client: Any, bot_id: str, commit_sizes: list[int], new: SessionCipher
) -> None:
    assert MAX_WRITES_PER_COMMIT == 500
    n = 1201
    s = open_session(firestore_client, bot_id, cipher=new)
    s.auth_key = AuthKey(KEY)
    s.process_entities(users(n))
    s.save()
    assert s.flush(30)
    assert s.store.writes == n  # the entities (save() wrote the session document through)
    assert s.store.commits == 3  # 500 + 500 + 201
    assert max(commit_sizes) == 500
    count = firestore_client.collection(f"bots/{bot_id}/user_sessions/42/entities").count().get()[0][0].value
    assert count == n

    # Re-sealing: conditional updates of every entity document (turning encrypt_pii on).
    mark = len(commit_sizes)
    assert FirestoreStore(SessionKey(bot_id, "42"), firestore_client, cipher=new, encrypt_pii=True).reseal() == n
    assert commit_sizes[mark:] == [500, 500, 201]

    # The manager's cleanup: the children of several sessions go in shared commits, then the documents.
    for uid in ("43", "44"):
        other = open_session(firestore_client, bot_id, uid=uid)
        other.process_entities(users(300))
        other.close()
    directory = FirestoreDirectory(firestore_client, bot_id)
    cutoff = datetime.datetime.now(UTC) + datetime.timedelta(minutes=1)
    stale = [u for u in directory.find_inactive(cutoff) if u.user_id != "42"]
    mark = len(commit_sizes)
    assert directory.delete_inactive(stale) == ["43", "44"]
    assert commit_sizes[mark:] == [2, 500, 100, 2]  # marks, children of both, documents

    # Deleting a session: its entities, then the document.
    mark = len(commit_sizes)
    assert s.delete() is True
    assert commit_sizes[mark:] == [500, 500, 201, 1]
    assert list(firestore_client.collection_group("entities").limit(1).stream()) == []


def test_change_writes_are_sealed_ordered_and_not_written(
    firestore_client: Any, bot_id: str, old: SessionCipher
) -> None:
    store = FirestoreStore(SessionKey(bot_id, "42"), firestore_client, cipher=old, encrypt_pii=True)
    state = types.updates.State(7, 0, datetime.datetime(2025, 1, 2, tzinfo=UTC), 3, 0)
    changes = Changes(
        entities={501: EntityRow(501, 5511, "alicew", "15550001111", "Alice W", 1700000000)},
        states={0: state},
        files={(b"\x01" * 16, 10, 0): (55, 66)},
    )
    header = SessionHeader(2, "149.154.167.51", 443, KEY, None)
    writes = list(store.change_writes(changes, header))
    # The session document first, merged, with the header sealed like save() seals it; then replaced documents.
    assert [(w.ref.path, w.kind) for w in writes] == [
        (f"bots/{bot_id}/user_sessions/42", "merge"),
        (f"bots/{bot_id}/user_sessions/42/entities/501", "set"),
        (f"bots/{bot_id}/user_sessions/42/sent_files/{'01' * 16}-10-0", "set"),
    ]
    session, entity, sent = (w.fields for w in writes)
    assert session is not None and entity is not None and sent is not None
    assert session["dc_id"] == 2 and session["update_states"] == {
        "0": {"pts": 7, "qts": 0, "date": 1735776000, "seq": 3}
    }
    assert session["auth_key"] != KEY and store.sealer.open_auth_key(session["auth_key"])[0] == KEY
    assert entity["hash"] == 5511 and isinstance(entity["username"], bytes) and entity["username_bi"]
    assert sent == {"md5": b"\x01" * 16, "size": 10, "type": 0, "id": 55, "hash": 66}
    assert_absent(repr(writes), auth_key=KEY)
    assert not [pii for pii in ("alicew", "15550001111", "Alice W") if pii in repr(writes)]
    assert not firestore_client.document(f"bots/{bot_id}/user_sessions/42").get().exists  # nothing was written


def test_one_listing_of_a_bots_users(firestore_client: Any, bot_id: str, caplog: pytest.LogCaptureFixture) -> None:
    sessions = firestore_client.collection("bots").document(bot_id).collection("user_sessions")
    for uid in ("5", "1", "3", "2", "4", "sp ace"):
        sessions.document(uid).set({"schema_version": SCHEMA_VERSION, "logged_in": uid == "3"})
    call = RPC_RETRY.call(10.0)
    # Two per page: the pages follow each other, the document that is not a user id is skipped (and logged).
    listed = [
        (uid, snap.to_dict())
        for uid, snap in iter_sessions(firestore_client, bot_id, ["logged_in"], call=call, page_size=2)
    ]
    assert listed == [(uid, {"logged_in": uid == "3"}) for uid in ("1", "2", "3", "4", "5")]
    assert "'sp ace'" in caplog.text
    assert [uid for uid, _ in iter_sessions(firestore_client, bot_id, call=call)] == ["1", "2", "3", "4", "5"]
    assert list(iter_sessions(firestore_client, "other-bot", call=call)) == []


def test_username_moves_to_new_owner(firestore_client: Any, bot_id: str) -> None:
    s = open_session(firestore_client, bot_id)
    s.process_entities([user(1, username="shared")])
    s.process_entities([user(2, username="shared")])
    assert s.get_input_entity("shared") == types.InputPeerUser(2, 14)
    s.close()
    fresh = open_session(firestore_client, bot_id)
    assert fresh.get_input_entity("@Shared") == types.InputPeerUser(2, 14)
    old = firestore_client.document(f"bots/{bot_id}/user_sessions/42/entities/1").get().to_dict()
    assert old["username"] is None


def test_newer_schema_is_refused_and_left_untouched(firestore_client: Any, bot_id: str) -> None:
    doc = firestore_client.document(f"bots/{bot_id}/user_sessions/42")
    doc.set({"schema_version": SCHEMA_VERSION + 1, "auth_key": KEY, "future": {"x": 1}})
    before = raw(doc)
    with pytest.raises(SchemaVersionError, match="upgrade") as info:
        open_session(firestore_client, bot_id)
    assert info.value.found == SCHEMA_VERSION + 1
    assert raw(doc) == before


@pytest.mark.parametrize(
    "data",
    [
        {"schema_version": 1, "dc_id": "two"},
        {"schema_version": 1, "auth_key": "not-bytes"},
        {"schema_version": 1, "update_states": ["x"]},
        {"schema_version": 1, "update_states": {"0": {"pts": 1}}},
        {"dc_id": 2},
        {"session_data": "U1FMaXRl"},
    ],
)
def test_wrong_shape_is_refused_and_left_untouched(firestore_client: Any, bot_id: str, data: dict[str, Any]) -> None:
    doc = firestore_client.document(f"bots/{bot_id}/user_sessions/42")
    doc.set(data)
    before = raw(doc)
    with pytest.raises(SessionCorruptError) as info:
        open_session(firestore_client, bot_id)
    if "session_data" in data:
        assert "import" in str(info.value)
    assert raw(doc) == before


@pytest.mark.parametrize("bad", ["", "a/b", "..", "../x", "x" * 200, "a\\b", "__x__", "sp ace", "nul\x00"])
def test_invalid_ids_are_rejected(firestore_client: Any, bad: str) -> None:
    with pytest.raises(InvalidSessionIdError):
        FirestoreSession(bad, bot_id="bot", client=firestore_client)
    with pytest.raises(InvalidSessionIdError):
        FirestoreSession("1", bot_id=bad, client=firestore_client)
    assert list(firestore_client.collections()) == []


def test_delete_removes_document_and_subcollections(firestore_client: Any, bot_id: str) -> None:
    s = open_session(firestore_client, bot_id)
    s.auth_key = AuthKey(KEY)
    s.process_entities(users(620))
    s.cache_file(b"\x02" * 16, 10, types.InputPhoto(1, 2, b""))
    s.save()
    assert s.flush(30)
    other = open_session(firestore_client, bot_id, uid="43")
    other.auth_key = AuthKey(KEY)
    other.save()

    assert s.delete() is True
    base = f"bots/{bot_id}/user_sessions/42"
    assert not firestore_client.document(base).get().exists
    assert list(firestore_client.collection(base + "/entities").limit(1).stream()) == []
    assert list(firestore_client.collection(base + "/sent_files").limit(1).stream()) == []
    assert firestore_client.document(f"bots/{bot_id}/user_sessions/43").get().exists
    # Nothing comes back from the writer after the delete, and nothing new is taken silently.
    s.save()
    s.process_entities(users(2, start=5000))
    with pytest.raises(SessionClosedError, match="deleted"):
        s.save()
    assert BackgroundWriter.get().flush(None, 10)
    assert not firestore_client.document(base).get().exists


def test_accepts_project_without_client(emulator: Emulator, firestore_client: Any, bot_id: str) -> None:
    s = FirestoreSession("7", bot_id=bot_id, project="demo-telethon-firestore-session")
    s.auth_key = AuthKey(KEY)
    s.save()
    assert firestore_client.document(f"bots/{bot_id}/user_sessions/7").get().exists


# -- Firestore going away ------------------------------------------------------------------


def test_save_with_only_entities_does_not_wait_for_firestore(
    firestore_client: Any, bot_id: str, paused: Emulator
) -> None:
    s = open_session(firestore_client, bot_id, rpc_timeout=1.0)
    s.auth_key = AuthKey(KEY)
    s.save()
    paused.pause()
    s.process_entities(users(5))
    start = time.perf_counter()
    s.save()
    assert time.perf_counter() - start < 0.1
    assert s.flush(0.5) is False  # the writer cannot reach Firestore
    paused.resume()
    assert s.flush(30) is True
    again = open_session(firestore_client, bot_id)
    assert again.get_input_entity("u1003") == types.InputPeerUser(1003, 1003 * 7)


def test_writer_retries_failed_commits(firestore_client: Any, bot_id: str, paused: Emulator) -> None:
    s = open_session(firestore_client, bot_id, rpc_timeout=0.5)
    writer = BackgroundWriter.get()
    failed_before = writer.failed_writes
    paused.pause()
    s.process_entities(users(4))
    s.save()
    deadline = time.monotonic() + 15
    while writer.failed_writes == failed_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.failed_writes > failed_before
    assert writer.stats().queue_depth >= 4
    paused.resume()
    assert s.flush(30)
    ids = {d.id for d in firestore_client.collection(f"bots/{bot_id}/user_sessions/42/entities").stream()}
    assert ids == {"1000", "1001", "1002", "1003"}


def test_write_through_failure_raises_and_is_retried(firestore_client: Any, bot_id: str, paused: Emulator) -> None:
    s = open_session(firestore_client, bot_id, rpc_timeout=0.5)
    paused.pause()
    s.auth_key = AuthKey(KEY)
    start = time.perf_counter()
    with pytest.raises(SessionStoreError) as info:
        s.save()
    assert time.perf_counter() - start < 10
    assert_absent(str(info.value), auth_key=KEY)
    paused.resume()
    # The change is still pending and the next save() writes it. A JVM just resumed, on a busy
    # machine, may need a moment longer than the 0.5 s deadline: the bot's next save() comes anyway.
    deadline = time.monotonic() + 15
    while True:
        try:
            s.save()
            break
        except SessionStoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    data = firestore_client.document(f"bots/{bot_id}/user_sessions/42").get().to_dict()
    assert data["auth_key"] == KEY


def test_lookup_while_firestore_is_away_is_a_bounded_uncached_miss(
    firestore_client: Any, bot_id: str, paused: Emulator
) -> None:
    s = open_session(firestore_client, bot_id)
    s.process_entities([user(77, username="later")])
    s.close()
    fresh = open_session(firestore_client, bot_id, lookup_timeout=0.5)
    paused.pause()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity("later")
    assert time.perf_counter() - start < 5
    breaker = fresh.store.breaker
    assert breaker is not None and breaker.open
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Could not find"):
        fresh.get_input_entity("later")  # the breaker answers at once
    assert time.perf_counter() - start < 0.1
    paused.resume()
    deadline = time.monotonic() + 30
    while breaker.open and time.monotonic() < deadline:
        time.sleep(0.1)  # the writer's thread probes Firestore every few seconds
    assert not breaker.open
    assert fresh.get_input_entity("later") == types.InputPeerUser(77, 77 * 7)


def test_close_waits_a_bounded_time(firestore_client: Any, bot_id: str, paused: Emulator) -> None:
    s = open_session(firestore_client, bot_id, rpc_timeout=0.5, close_timeout=1.0)
    paused.pause()
    s.process_entities(users(2))
    start = time.perf_counter()
    s.close()
    assert time.perf_counter() - start < 3
    paused.resume()
    assert s.flush(30)
