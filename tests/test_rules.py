"""The shipped Firestore security rules, enforced by a second real emulator started with ``--rules``.

Client requests go through the emulator's REST API the way a web or mobile app's would: with no
token, or with an end user's ID token (the emulator accepts unsigned JWTs, ``alg: none``, as
Firebase Auth ID tokens). The library's own client sends ``Authorization: Bearer owner``, the
emulator's stand-in for service-account credentials, which bypass security rules.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from telethon.crypto import AuthKey
from telethon.tl import types

from telethon_firestore_session import FirestoreSession
from telethon_firestore_session.firestore import security_rules
from tests.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ROOT / "telethon_firestore_session" / "firestore" / "firestore.rules"
BOT = "b"
USER = "alice"
KEY = bytes(range(256))
ENTITY = types.User(1001, access_hash=7007, username="carol", first_name="Carol")


def test_the_root_copy_is_the_packaged_one() -> None:
    assert (ROOT / "firestore.rules").read_bytes() == PACKAGED.read_bytes()
    assert security_rules() == PACKAGED.read_text(encoding="utf-8")
    assert security_rules().lstrip().startswith("//")  # comments first, then rules_version
    assert "\nrules_version = '2';\n" in security_rules()


@pytest.fixture(scope="module")
def rules_emulator(emulator_jar: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator of its own, enforcing exactly what ``security_rules()`` returns in every project."""
    path = tmp_path_factory.mktemp("rules") / "firestore.rules"
    path.write_text(security_rules(), encoding="utf-8")
    emu = Emulator.start(emulator_jar, rules=str(path))
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def project() -> str:
    """A fresh project for each test, so no test sees another's data or rules."""
    return f"demo-rules-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(rules_emulator: Emulator, project: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The library's Firestore client on the rules emulator (emulator mode: ``Bearer owner``)."""
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", rules_emulator.host)
    c = firestore.Client(project=project)
    try:
        yield c
    finally:
        c.close()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(project: str, uid: str) -> str:
    """An end user's Firebase ID token as the emulator takes it: a JWT with no signature."""
    now = int(time.time())
    claims = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "iat": now,
        "exp": now + 3600,
        "auth_time": now,
        "sub": uid,
        "user_id": uid,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    return f"{_b64({'alg': 'none', 'kid': 'fakekid', 'typ': 'JWT'})}.{_b64(claims)}."


def rest(
    emu: Emulator, method: str, url: str, *, token: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, str | None]:
    """HTTP status and error status of one REST request; the body stays out (it may hold an auth key)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(emu.url + url, data=data, method=method, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["status"]


def documents(project: str) -> str:
    return f"/v1/projects/{project}/databases/(default)/documents"


def store_session(client: Any, uid: str = USER) -> None:
    """The library writes a session (auth key, DC, an entity, a sent file) as a server would."""
    s = FirestoreSession(uid, bot_id=BOT, client=client)
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(KEY)
    s.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1001), [], [ENTITY]))
    s.cache_file(b"\x01" * 16, 1234, types.InputDocument(55, 66, b"ref"))
    assert s.flush(10)
    s.close()


# What a client with the app's config could try: (method, path under documents, body).
AUTH_KEY_FIELD = {"fields": {"auth_key": {"bytesValue": base64.b64encode(b"\x00" * 256).decode()}}}
ENTITY_FIELDS = {"fields": {"hash": {"integerValue": "1"}, "username": {"stringValue": "mallory"}}}
ATTEMPTS = {
    "read the session": ("GET", f"/bots/{BOT}/user_sessions/{USER}", None),
    "list the sessions": ("GET", f"/bots/{BOT}/user_sessions", None),
    "read an entity": ("GET", f"/bots/{BOT}/user_sessions/{USER}/entities/1001", None),
    "list the sent files": ("GET", f"/bots/{BOT}/user_sessions/{USER}/sent_files", None),
    "query every bot's sessions": (
        "POST",
        ":runQuery",
        {"structuredQuery": {"from": [{"collectionId": "user_sessions", "allDescendants": True}]}},
    ),
    "overwrite the auth key": ("PATCH", f"/bots/{BOT}/user_sessions/{USER}", AUTH_KEY_FIELD),
    "create a session": ("PATCH", f"/bots/{BOT}/user_sessions/mallory", AUTH_KEY_FIELD),
    "write an entity": ("PATCH", f"/bots/{BOT}/user_sessions/{USER}/entities/1001", ENTITY_FIELDS),
    "delete the session": ("DELETE", f"/bots/{BOT}/user_sessions/{USER}", None),
    "read the bot's session": ("GET", f"/bots/{BOT}/bot_session/session", None),
    "write the bot's session": ("PATCH", f"/bots/{BOT}/bot_session/session", AUTH_KEY_FIELD),
    "write the bot's entities": ("PATCH", f"/bots/{BOT}/bot_session/session/entities/1001", ENTITY_FIELDS),
}


@pytest.mark.firestore
@pytest.mark.parametrize("who", ["no token", "a user's ID token"])
def test_clients_get_nothing_of_the_sessions(rules_emulator: Emulator, client: Any, project: str, who: str) -> None:
    store_session(client)
    session_doc = client.document(f"bots/{BOT}/user_sessions/{USER}")
    before = session_doc.get().update_time
    token = id_token(project, USER) if who != "no token" else None
    answers = {
        name: rest(rules_emulator, method, documents(project) + path, token=token, body=body)
        for name, (method, path, body) in ATTEMPTS.items()
    }
    assert answers == dict.fromkeys(ATTEMPTS, (403, "PERMISSION_DENIED"))
    # Nothing was written: the session and its entity are as the library left them.
    assert session_doc.get().update_time == before
    assert session_doc.get().get("auth_key") == KEY
    assert session_doc.collection("entities").document("1001").get().get("username") == "carol"
    assert not client.document(f"bots/{BOT}/user_sessions/mallory").get().exists
    assert not client.document(f"bots/{BOT}/bot_session/session").get().exists


@pytest.mark.firestore
def test_the_library_still_reads_and_writes(client: Any) -> None:
    store_session(client)
    again = FirestoreSession(USER, bot_id=BOT, client=client)
    assert again.auth_key is not None and again.auth_key.key == KEY
    assert (again.dc_id, again.server_address, again.port) == (2, "149.154.167.51", 443)
    assert again.get_input_entity("carol") == types.InputPeerUser(1001, 7007)
    assert again.get_file(b"\x01" * 16, 1234, types.InputDocument) == types.InputDocument(55, 66, b"")
    again.set_dc(4, "149.154.167.91", 443)
    again.save()
    again.close()
    assert FirestoreSession(USER, bot_id=BOT, client=client).dc_id == 4
    assert FirestoreSession(USER, bot_id=BOT, client=client).delete()
    assert not client.document(f"bots/{BOT}/user_sessions/{USER}").get().exists


def merged(app_rules: str) -> str:
    """The README's merge: the lines between BEGIN and END, inside the app's ``documents`` block."""
    lines = security_rules().splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if "// BEGIN telethon-firestore-session" in line)
    end = next(i for i, line in enumerate(lines) if "// END telethon-firestore-session" in line)
    ours = "".join(lines[begin : end + 1])
    return (
        "rules_version = '2';\n"
        "service cloud.firestore {\n"
        "  match /databases/{database}/documents {\n"
        f"{app_rules}{ours}"
        "  }\n"
        "}\n"
    )


def load_rules(emu: Emulator, project: str, text: str) -> None:
    """Replace one project's rules, as ``@firebase/rules-unit-testing`` does (other projects keep ours)."""
    body = {"rules": {"files": [{"name": "firestore.rules", "content": text}]}}
    assert rest(emu, "PUT", f"/emulator/v1/projects/{project}:securityRules", token="owner", body=body) == (200, None)


@pytest.mark.firestore
def test_merged_rules_leave_the_applications_own_data_to_its_rules(
    rules_emulator: Emulator, client: Any, project: str
) -> None:
    app = (
        "    // The application's own data: each user reads and writes their own profile.\n"
        "    match /bots/{botId}/users/{userId} {\n"
        "      allow read, write: if request.auth != null && request.auth.uid == userId;\n"
        "    }\n"
    )
    load_rules(rules_emulator, project, merged(app))
    store_session(client)
    alice = id_token(project, USER)
    base = documents(project) + f"/bots/{BOT}"
    profile = {"fields": {"language": {"stringValue": "en"}}}
    assert rest(rules_emulator, "PATCH", f"{base}/users/{USER}", token=alice, body=profile) == (200, None)
    assert rest(rules_emulator, "GET", f"{base}/users/{USER}", token=alice) == (200, None)
    assert client.document(f"bots/{BOT}/users/{USER}").get().get("language") == "en"
    # The application's rule still decides for its own paths; ours still deny the sessions.
    assert rest(rules_emulator, "GET", f"{base}/users/bob", token=alice) == (403, "PERMISSION_DENIED")
    assert rest(rules_emulator, "GET", f"{base}/user_sessions/{USER}", token=alice) == (403, "PERMISSION_DENIED")
    assert rest(rules_emulator, "PATCH", f"{base}/user_sessions/{USER}", token=alice, body=AUTH_KEY_FIELD) == (
        403,
        "PERMISSION_DENIED",
    )
    assert client.document(f"bots/{BOT}/user_sessions/{USER}").get().get("auth_key") == KEY


@pytest.mark.firestore
def test_a_test_mode_rule_next_to_ours_opens_the_sessions(rules_emulator: Emulator, client: Any, project: str) -> None:
    """What the file's comments warn about: rules only add access, so "test mode" must go."""
    test_mode = "    match /{document=**} {\n      allow read, write: if true;\n    }\n"
    load_rules(rules_emulator, project, merged(test_mode))
    store_session(client)
    assert rest(rules_emulator, "GET", documents(project) + f"/bots/{BOT}/user_sessions/{USER}") == (200, None)
