"""A real TelegramClient on a FirestoreSession, never connected (no test reaches the internet).

The client is built in a fresh process to prove that the auth key and DC its
sender uses come from Firestore when the session object is constructed. The
key itself never leaves the child process: it prints a SHA-256 of it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient, utils
from telethon._updates import ChannelState, SessionState
from telethon.crypto import AuthKey
from telethon.tl import types

from telethon_firestore_session import BackgroundWriter, FirestoreSession
from telethon_firestore_session.testing import StoreProbe
from tests.leaks import assert_absent

pytestmark = pytest.mark.firestore

KEY = bytes((i * 31 + 11) % 256 for i in range(256))
UTC = datetime.timezone.utc

CHILD = """
import asyncio, hashlib, json, sys

from telethon import TelegramClient

from telethon_firestore_session import FirestoreSession


async def main() -> None:
    bot_id, user_id = sys.argv[1], sys.argv[2]
    # No client= and no project=: the emulator and project come from the environment.
    session = FirestoreSession(user_id, bot_id=bot_id)
    client = TelegramClient(session=session, api_id=1, api_hash="x")
    sender_key = client._sender.auth_key
    out = {
        "sender_key_sha256": hashlib.sha256(sender_key.key).hexdigest() if sender_key.key else None,
        "sender_uses_session_key": sender_key is client.session.auth_key,
        "dc": [client.session.dc_id, client.session.server_address, client.session.port],
        "connected": bool(client.is_connected()),
    }
    client.session.close()
    print(json.dumps(out))


asyncio.run(main())
"""


def _session(client: Any, bot_id: str, **kw: Any) -> FirestoreSession:
    return FirestoreSession("7", bot_id=bot_id, client=client, **kw)


def _stored(client: Any, bot_id: str) -> FirestoreSession:
    s = _session(client, bot_id)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(KEY)
    s.save()
    s.close()
    return s


@pytest.mark.slow
def test_fresh_process_client_uses_the_stored_auth_key_and_dc(
    firestore_client: Any, bot_id: str, tmp_path: Path
) -> None:
    _stored(firestore_client, bot_id)
    env = dict(os.environ)
    assert env.get("FIRESTORE_EMULATOR_HOST") and env.get("GOOGLE_CLOUD_PROJECT")
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD, bot_id, "7"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert_absent(output, auth_key=KEY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # not even a warning ignored in a destructor
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "sender_key_sha256": hashlib.sha256(KEY).hexdigest(),
        "sender_uses_session_key": True,
        "dc": [2, "149.154.167.51", 443],
        "connected": False,
    }


async def test_clone_takes_no_arguments_and_never_writes(firestore_client: Any, bot_id: str) -> None:
    _stored(firestore_client, bot_id)
    client = TelegramClient(session=_session(firestore_client, bot_id), api_id=1, api_hash="x")
    doc = firestore_client.document(f"bots/{bot_id}/user_sessions/7")
    before = doc.get().update_time

    # What TelegramClient._get_cdn_client does with the session.
    cloned = await utils.maybe_async(client.session.clone())
    await utils.maybe_async(cloned.set_dc(203, "91.105.192.100", 443))
    cloned.auth_key = AuthKey(bytes(256))
    cloned.process_entities([types.User(1, access_hash=2, username="cdnuser")])
    await utils.maybe_async(cloned.save())
    await utils.maybe_async(cloned.close())
    assert BackgroundWriter.get().flush(None, 10)

    assert doc.get().update_time == before
    assert list(doc.collection("entities").limit(1).stream()) == []
    assert client.session.dc_id == 2 and client.session.auth_key.key == KEY
    again = _session(firestore_client, bot_id)
    assert (again.dc_id, again.server_address, again.auth_key.key) == (2, "149.154.167.51", KEY)


async def test_disconnect_saves_states_and_self_user(firestore_client: Any, bot_id: str) -> None:
    _stored(firestore_client, bot_id)
    session = _session(firestore_client, bot_id)
    client = TelegramClient(session=session, api_id=1, api_hash="x")
    probe = StoreProbe(session)
    # What a connected, logged-in client knows: its own user, the account state and one channel's pts.
    date = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    client._mb_entity_cache.set_self_user(123456, False, 98765)
    client._message_box.load(SessionState(0, 0, False, 100, 5, int(date.timestamp()), 7, None), [ChannelState(777, 55)])
    session.process_entities(types.users.UserFull(None, [], [types.User(123456, access_hash=98765, is_self=True)]))

    await client._save_states_and_entities()  # the keep-alive path
    assert session.flush(10)
    assert (probe.entities_written, probe.states_written) == (2, 2)  # self (id 0) and the user; 2 states
    await client._save_states_and_entities()  # unchanged: nothing new to write
    assert session.flush(10)
    assert (probe.entities_written, probe.states_written) == (2, 2)

    await client.disconnect()  # never connected: saves states and entities, then closes the session

    fresh = _session(firestore_client, bot_id)
    # What TelegramClient.connect() reads back to find its own user.
    assert fresh.get_input_entity(0) == types.InputPeerUser(0, 123456)
    assert fresh.get_input_entity(123456) == types.InputPeerUser(123456, 98765)
    states = dict(fresh.get_update_states())
    assert sorted(states) == [0, 777]
    assert (states[0].pts, states[0].qts, states[0].date, states[0].seq) == (100, 5, date, 7)
    assert states[777].pts == 55
    assert fresh.auth_key.key == KEY and fresh.dc_id == 2
