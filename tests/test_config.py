"""The environment factory: backend decisions, start-up validation, masking, and real sessions from it."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from telethon.crypto import AuthKey

from telethon_firestore_session import ConfigError, FirestoreSession, SessionCipher, SessionInUseError
from telethon_firestore_session.config import (
    SessionConfig,
    create_bot_session,
    create_session,
    default_config,
    get_deployment_info,
    is_render,
    log_deployment_info,
    open_directory,
)
from telethon_firestore_session.manager import UserSessionManager
from telethon_firestore_session.sqlite import ScopedSQLiteSession, read_metadata
from tests.common import clean_env
from tests.leaks import assert_absent

API_HASH = "0123456789abcdef0123456789abcdef"
BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"
ENC_KEY = base64.urlsafe_b64encode(bytes(range(1, 33))).decode()
AUTH = bytes((i * 17 + 9) % 256 for i in range(256))
RENDER_ENVS = {
    "none": {},
    "RENDER": {"RENDER": "true"},
    "RENDER_SERVICE_ID": {"RENDER_SERVICE_ID": "srv-abc123"},
    "RENDER_INSTANCE_ID": {"RENDER_INSTANCE_ID": "srv-abc123-xyz9"},
}


@pytest.fixture(scope="module")
def service_account() -> dict[str, str]:
    """A well-formed service-account key with a real (throwaway) RSA private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "demo-from-credentials",
        "private_key_id": "0123abcd",
        "private_key": pem,
        "client_email": "sessions@demo-from-credentials.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def env(**values: str) -> dict[str, str]:
    return {"BOT_ID": "mybot", **values}


# -- which backend -------------------------------------------------------------------------------


@pytest.mark.parametrize("render", list(RENDER_ENVS))
@pytest.mark.parametrize("use_local", [None, "true", "false", "1", "0", "YES", "off"])
def test_backend_decision(render: str, use_local: str | None) -> None:
    values = env(FIREBASE_PROJECT_ID="demo-project", **RENDER_ENVS[render])
    if use_local is not None:
        values["USE_LOCAL_STORAGE"] = use_local
    config = SessionConfig.from_env(values)
    on_render = render != "none"
    if use_local is None:
        expected = "firestore" if on_render else "sqlite"
    else:
        expected = "sqlite" if use_local.lower() in ("true", "1", "yes") else "firestore"
    assert config.backend == expected
    assert config.render is on_render
    assert config.is_local is (expected == "sqlite")
    reason = config.backend_reason
    if use_local is not None:
        assert reason.startswith("USE_LOCAL_STORAGE=")
    else:
        assert reason == (
            "running on Render (its disk is wiped on restart)" if on_render else "default (not on Render)"
        )


def test_render_detection() -> None:
    assert not is_render({})
    assert not is_render({"RENDER": ""})
    assert is_render({"RENDER": "true"})
    assert is_render({"RENDER_INSTANCE_ID": "srv-1-abc"})
    assert not is_render({"RENDER": "false", "RENDER_SERVICE_ID": "srv-1"})  # explicitly off


def test_is_render_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RENDER", "RENDER_SERVICE_ID", "RENDER_INSTANCE_ID"):
        monkeypatch.delenv(name, raising=False)
    assert not is_render()
    monkeypatch.setenv("RENDER_SERVICE_ID", "srv-9")
    assert is_render()


def test_local_defaults_and_values() -> None:
    config = SessionConfig.from_env(
        env(API_ID=" 12345 ", API_HASH=API_HASH, BOT_TOKEN=BOT_TOKEN, SESSIONS_DIR="/var/lib/bot/sessions")
    )
    assert config.bot_id == "mybot"
    assert config.api_id == 12345 and config.api_hash == API_HASH and config.bot_token == BOT_TOKEN
    assert config.sessions_dir == Path("/var/lib/bot/sessions")
    assert config.cipher is None and config.encrypt_pii is False
    assert SessionConfig.from_env(env()).sessions_dir == Path("sessions")


def test_project_sources(service_account: dict[str, str]) -> None:
    fs = {"USE_LOCAL_STORAGE": "false"}
    assert SessionConfig.from_env(env(**fs, FIREBASE_PROJECT_ID="demo-a", GOOGLE_CLOUD_PROJECT="demo-b")).project == (
        "demo-a"
    )
    assert SessionConfig.from_env(env(**fs, GOOGLE_CLOUD_PROJECT="demo-b")).project == "demo-b"
    creds = json.dumps(service_account)
    assert SessionConfig.from_env(env(**fs, FIREBASE_CREDENTIALS=creds)).project == "demo-from-credentials"
    # The emulator alone is enough (the client uses its default project there).
    assert SessionConfig.from_env(env(**fs, FIRESTORE_EMULATOR_HOST="127.0.0.1:8080")).project is None


def test_encryption_settings() -> None:
    config = SessionConfig.from_env(env(SESSION_ENCRYPTION_KEY=ENC_KEY, SESSION_ENCRYPT_PII="true"))
    assert isinstance(config.cipher, SessionCipher) and config.encrypt_pii
    assert config.session_options() == {"cipher": config.cipher, "encrypt_pii": True}
    assert SessionConfig.from_env(env()).session_options() == {}


# -- errors at start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "variable", "says"),
    [
        ({}, "BOT_ID", "is not set"),
        ({"BOT_ID": "   "}, "BOT_ID", "is not set"),
        ({"BOT_ID": "a..b"}, "BOT_ID", "'..'"),
        ({"BOT_ID": "../etc"}, "BOT_ID", "path separators"),
        ({"BOT_ID": "a/b"}, "BOT_ID", "path separators"),
        ({"BOT_ID": "x" * 129}, "BOT_ID", "at most 128"),
        (env(USE_LOCAL_STORAGE="maybe"), "USE_LOCAL_STORAGE", "true or false"),
        (env(API_ID="12ab", API_HASH=API_HASH), "API_ID", "must be an integer"),
        (env(API_ID="-5", API_HASH=API_HASH), "API_ID", "positive"),
        (env(API_ID="12345"), "API_HASH", "give both"),
        (env(API_HASH=API_HASH), "API_ID", "give both"),
        (env(API_ID="12345", API_HASH="not-a-hash"), "API_HASH", "32 hexadecimal"),
        (env(BOT_TOKEN="hello"), "BOT_TOKEN", "@BotFather"),
        (env(USE_LOCAL_STORAGE="false"), "FIREBASE_PROJECT_ID", "no project"),
        (env(RENDER="true"), "FIREBASE_PROJECT_ID", "USE_LOCAL_STORAGE=true"),
        (env(FIREBASE_PROJECT_ID="Not A Project"), "FIREBASE_PROJECT_ID", "not a Google Cloud project id"),
        (env(FIREBASE_CREDENTIALS="{not json"), "FIREBASE_CREDENTIALS", "not valid JSON"),
        (env(FIREBASE_CREDENTIALS="[1, 2]"), "FIREBASE_CREDENTIALS", "JSON object"),
        (env(FIREBASE_CREDENTIALS='{"type": "authorized_user"}'), "FIREBASE_CREDENTIALS", "service-account"),
        (env(FIREBASE_CREDENTIALS='{"type": "service_account"}'), "FIREBASE_CREDENTIALS", "lacks client_email"),
        (env(GOOGLE_APPLICATION_CREDENTIALS="/nonexistent/key.json"), "GOOGLE_APPLICATION_CREDENTIALS", "not a"),
        (env(FIRESTORE_EMULATOR_HOST="localhost"), "FIRESTORE_EMULATOR_HOST", "host:port"),
        (env(FIRESTORE_EMULATOR_HOST="localhost:99999"), "FIRESTORE_EMULATOR_HOST", "host:port"),
        (env(SESSION_ENCRYPT_PII="true"), "SESSION_ENCRYPT_PII", "SESSION_ENCRYPTION_KEY"),
        (env(SESSION_ENCRYPT_PII="sometimes"), "SESSION_ENCRYPT_PII", "true or false"),
        (env(SESSION_ENCRYPTION_KEY="too-short"), "SESSION_ENCRYPTION_KEY", ""),
    ],
)
def test_bad_values_name_the_variable(values: dict[str, str], variable: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionConfig.from_env(values)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")
    assert says in str(info.value)


def test_credential_errors_never_quote_the_credentials(service_account: dict[str, str]) -> None:
    secret = service_account["private_key"]
    broken = json.dumps({**service_account, "private_key": secret[:200] + "garbage" + secret[200:]})
    truncated = json.dumps(service_account)[:-40]
    for text in (broken, truncated):
        with pytest.raises(ConfigError) as info:
            SessionConfig.from_env(env(USE_LOCAL_STORAGE="false", FIREBASE_CREDENTIALS=text))
        assert info.value.variable == "FIREBASE_CREDENTIALS"
        message = str(info.value)
        assert "PRIVATE KEY" not in message and secret[40:80] not in message
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained original either


def test_hand_built_config_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="backend"):
        SessionConfig(bot_id="b", backend="s3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="API_ID"):
        SessionConfig(bot_id="b", api_id="1", api_hash=API_HASH)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="FIREBASE_PROJECT_ID"):
        SessionConfig(bot_id="b", backend="firestore")
    with pytest.raises(ConfigError, match="BOT_ID"):
        SessionConfig(bot_id="")
    assert SessionConfig(bot_id="b", sessions_dir="x").sessions_dir == Path("x")  # type: ignore[arg-type]


def test_an_unknown_backend_is_a_config_error_wherever_it_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend"):
        open_directory("s3", "b", sessions_dir=tmp_path)
    with pytest.raises(ConfigError, match="backend"):
        UserSessionManager("b", backend="s3", sessions_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was created


# -- secrets are masked ------------------------------------------------------------------------------


def test_secrets_are_masked_in_repr_info_and_logs(
    service_account: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    values = env(
        USE_LOCAL_STORAGE="false",
        API_ID="12345",
        API_HASH=API_HASH,
        BOT_TOKEN=BOT_TOKEN,
        FIREBASE_CREDENTIALS=json.dumps(service_account),
        SESSION_ENCRYPTION_KEY=ENC_KEY,
        RENDER_INSTANCE_ID="srv-abc-1",
        RENDER_SERVICE_ID="srv-abc",
    )
    config = SessionConfig.from_env(values)
    info = get_deployment_info(config)
    with caplog.at_level(logging.DEBUG):
        logged = log_deployment_info(config)
    assert logged == info
    texts = {"repr": repr(config), "str": str(config), "info": json.dumps(info), "log": caplog.text}
    secrets = {
        "api_hash": API_HASH,
        "bot_token": BOT_TOKEN.split(":")[1],
        "private_key": service_account["private_key"].splitlines()[5],
        "encryption key": ENC_KEY,
        "encryption key bytes": bytes(range(1, 33)).hex(),
    }
    for where, text in texts.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} leaked into {where}"
    assert "123456789:***" in repr(config)  # the bot id part of a token is public
    assert info["api_hash"] == "***" and info["bot_token"] == "123456789:***"
    assert "sessions@demo-from-credentials" in info["credentials"]
    assert "deployment:" in caplog.text and "srv-abc-1" in caplog.text


def test_deployment_info_keys(tmp_path: Path) -> None:
    local = SessionConfig.from_env(env(SESSIONS_DIR=str(tmp_path)))
    info = get_deployment_info(local)
    assert info["is_render"] is False and info["is_local"] is True
    assert info["backend"] == "sqlite" and info["bot_id"] == "mybot"
    assert info["sessions_dir"] == str(tmp_path.resolve()) and "project" not in info
    assert info["emulator"] is None and info["encryption"] is False and info["key_id"] is None
    assert info["api_hash"] is None and info["bot_token"] is None
    assert info["instance_id"]  # the host name off Render

    render = SessionConfig.from_env(
        env(RENDER="true", RENDER_INSTANCE_ID="srv-1-x", FIREBASE_PROJECT_ID="demo-p", SESSION_ENCRYPTION_KEY=ENC_KEY)
    )
    info = get_deployment_info(render)
    assert info["is_render"] is True and info["is_local"] is False
    assert info["backend"] == "firestore" and info["project"] == "demo-p" and "sessions_dir" not in info
    assert info["instance_id"] == "srv-1-x" and info["credentials"] == "application default credentials"
    assert info["encryption"] is True and info["key_id"] == render.cipher.key_id  # type: ignore[union-attr]


def test_default_config_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RENDER", "RENDER_SERVICE_ID", "RENDER_INSTANCE_ID", "SESSION_ENCRYPTION_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOT_ID", "envbot")
    monkeypatch.setenv("USE_LOCAL_STORAGE", "true")
    monkeypatch.setenv("SESSIONS_DIR", str(tmp_path))
    first = default_config()
    assert default_config() is first  # read once while nothing changes
    monkeypatch.setenv("BOT_ID", "otherbot")
    assert default_config().bot_id == "otherbot"
    assert get_deployment_info()["bot_id"] == "otherbot"
    monkeypatch.delenv("BOT_ID")
    with pytest.raises(ConfigError, match="BOT_ID"):
        default_config()


# -- sessions from the factory -------------------------------------------------------------------------


def test_create_session_local(tmp_path: Path) -> None:
    config = SessionConfig.from_env(env(SESSIONS_DIR=str(tmp_path / "s")))
    session = create_session(77, config)
    try:
        assert isinstance(session, ScopedSQLiteSession)
        assert session.path == (tmp_path / "s" / "mybot" / "user_77.session").resolve()
    finally:
        session.close()


def test_create_session_local_sealed(tmp_path: Path) -> None:
    config = SessionConfig.from_env(env(SESSIONS_DIR=str(tmp_path), SESSION_ENCRYPTION_KEY=ENC_KEY))
    session = create_session("77", config)
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(AUTH)
    session.save()
    session.close()
    data = (tmp_path / "mybot" / "user_77.session").read_bytes()
    assert_absent(data, auth_key=AUTH)  # sealed in the file
    again = create_session("77", config)
    assert again.auth_key is not None and again.auth_key.key == AUTH
    again.close()


def test_the_bots_own_session_is_a_locked_file_outside_the_users(tmp_path: Path) -> None:
    config = SessionConfig.from_env(env(SESSIONS_DIR=str(tmp_path), SESSION_ENCRYPTION_KEY=ENC_KEY))
    user = create_session("bot", config)  # a user may be called "bot": another file, another seal
    user.auth_key = AuthKey(AUTH)
    user.save()
    user.close()
    bot = create_bot_session(config)
    assert isinstance(bot, ScopedSQLiteSession) and bot.path == (tmp_path / "mybot" / "bot.session").resolve()
    assert bot.auth_key is None  # not user "bot"'s
    bot.auth_key = AuthKey(bytes(reversed(AUTH)))
    bot.save()
    assert_absent((tmp_path / "mybot" / "bot.session").read_bytes(), auth_key=bytes(reversed(AUTH)))  # sealed
    with pytest.raises(SessionInUseError):
        create_bot_session(config, handoff_timeout=0.3)  # locked while open: waited for, then refused
    closer = threading.Timer(0.3, bot.close)
    closer.start()
    again = create_bot_session(config)  # waits for the lock of a process that is stopping
    closer.join()
    try:
        assert again.auth_key is not None and again.auth_key.key == bytes(reversed(AUTH))
    finally:
        again.close()
    listed = [u.user_id for u in config.directory().list_users()]
    assert listed == ["bot"] and set(read_metadata(tmp_path, "mybot")) == {"bot"}  # the user, not the bot


@pytest.mark.firestore
def test_create_session_firestore_sealed_and_shared_client(firestore_client: Any, bot_id: str) -> None:
    config = SessionConfig.from_env(
        {
            "BOT_ID": bot_id,
            "RENDER": "true",
            "FIRESTORE_EMULATOR_HOST": os.environ["FIRESTORE_EMULATOR_HOST"],
            "GOOGLE_CLOUD_PROJECT": os.environ["GOOGLE_CLOUD_PROJECT"],
            "SESSION_ENCRYPTION_KEY": ENC_KEY,
        }
    )
    assert config.backend == "firestore"
    a = create_session("1", config)
    b = create_session("2", config)
    assert isinstance(a, FirestoreSession) and isinstance(b, FirestoreSession)
    assert a.document._client is b.document._client is config.firestore_client()  # one connection
    a.set_dc(4, "149.154.167.91", 443)
    a.auth_key = AuthKey(AUTH)
    a.save()
    a.close()
    b.close()
    stored = firestore_client.document(f"bots/{bot_id}/user_sessions/1").get().to_dict()
    assert stored["dc_id"] == 4 and isinstance(stored["auth_key"], bytes)
    assert_absent(stored["auth_key"], auth_key=AUTH)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("firestore", marks=pytest.mark.firestore)])
def test_the_directory_of_a_configuration_sees_its_sessions(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    values = env(SESSIONS_DIR=str(tmp_path), SESSION_ENCRYPTION_KEY=ENC_KEY, USE_LOCAL_STORAGE="true")
    if backend == "firestore":
        request.getfixturevalue("firestore_client")  # a freshly reset emulator
        values.update(
            BOT_ID=request.getfixturevalue("bot_id"),
            USE_LOCAL_STORAGE="false",
            FIRESTORE_EMULATOR_HOST=os.environ["FIRESTORE_EMULATOR_HOST"],
            GOOGLE_CLOUD_PROJECT=os.environ["GOOGLE_CLOUD_PROJECT"],
        )
    config = SessionConfig.from_env(values)
    session = config.create_session("7")
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(AUTH)
    session.save()
    session.close()
    directory = config.directory()
    try:
        assert (directory.backend, directory.bot_id, directory.cipher) == (backend, config.bot_id, config.cipher)
        assert [r.user_id for r in directory.list_users()] == ["7"]
        reopened = directory.open_session("7", flush_interval=5.0, close_timeout=5.0)
        assert reopened.auth_key is not None and reopened.auth_key.key == AUTH  # opened with the config's key
        reopened.close()
    finally:
        directory.close()
    if backend == "firestore":  # the directory did not own the configuration's client: still usable
        assert config.firestore_client().document(f"bots/{config.bot_id}/user_sessions/7").get().exists
        config.firestore_client().close()


@pytest.mark.firestore
def test_emulator_host_from_the_mapping_must_be_in_the_process_environment(
    firestore_client: Any, bot_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = os.environ["FIRESTORE_EMULATOR_HOST"]
    project = os.environ["GOOGLE_CLOUD_PROJECT"]
    mapping = {"BOT_ID": bot_id, "USE_LOCAL_STORAGE": "false", "FIRESTORE_EMULATOR_HOST": host}
    mapping["GOOGLE_CLOUD_PROJECT"] = project
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")  # only the mapping names it
    with pytest.raises(ConfigError) as info:
        create_session("5", SessionConfig.from_env(mapping))
    assert info.value.variable == "FIRESTORE_EMULATOR_HOST" and "process environment" in str(info.value)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)  # where google-cloud-firestore reads it
    session = create_session("5", SessionConfig.from_env(mapping))
    session.set_dc(2, "149.154.167.51", 443)
    session.save()
    session.close()
    assert firestore_client.document(f"bots/{bot_id}/user_sessions/5").get().exists


def test_service_account_credentials_are_used(service_account: dict[str, str]) -> None:
    config = SessionConfig.from_env(env(USE_LOCAL_STORAGE="false", FIREBASE_CREDENTIALS=json.dumps(service_account)))
    client = config.firestore_client()  # builds the client; no RPC is made here
    try:
        assert client.project == "demo-from-credentials"
        assert client._credentials.service_account_email == service_account["client_email"]
    finally:
        client.close()


CHILD = """
import hashlib, json, sys
from telethon import TelegramClient
from telethon_firestore_session.config import create_session

session = create_session(sys.argv[1])  # everything from the environment
client = TelegramClient(session=session, api_id=1, api_hash="x")
key = client._sender.auth_key
print(json.dumps({
    "type": type(session).__name__,
    "key_sha256": hashlib.sha256(key.key).hexdigest() if key.key else None,
    "dc": [client.session.dc_id, client.session.server_address, client.session.port],
}))
session.close()
"""


def _child(environ: dict[str, str], cwd: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHILD, "31"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=cwd,
        check=False,
    )
    assert_absent(proc.stdout + proc.stderr, auth_key=AUTH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
def test_fresh_process_client_from_create_session_local(tmp_path: Path) -> None:
    config = SessionConfig.from_env(env(SESSIONS_DIR=str(tmp_path / "sessions"), SESSION_ENCRYPTION_KEY=ENC_KEY))
    stored = config.create_session("31")
    stored.set_dc(2, "149.154.167.51", 443)
    stored.auth_key = AuthKey(AUTH)
    stored.save()
    stored.close()
    out = _child(clean_env(BOT_ID="mybot", SESSION_ENCRYPTION_KEY=ENC_KEY), tmp_path)  # SESSIONS_DIR default
    assert out == {
        "type": "ScopedSQLiteSession",
        "key_sha256": hashlib.sha256(AUTH).hexdigest(),
        "dc": [2, "149.154.167.51", 443],
    }


@pytest.mark.firestore
@pytest.mark.slow
def test_fresh_process_client_from_create_session_on_render(firestore_client: Any, bot_id: str, tmp_path: Path) -> None:
    host, project = os.environ["FIRESTORE_EMULATOR_HOST"], os.environ["GOOGLE_CLOUD_PROJECT"]
    values = {"BOT_ID": bot_id, "RENDER": "true", "FIRESTORE_EMULATOR_HOST": host, "GOOGLE_CLOUD_PROJECT": project}
    stored = SessionConfig.from_env(values).create_session("31")
    stored.set_dc(4, "149.154.167.91", 443)
    stored.auth_key = AuthKey(AUTH)
    stored.save()
    stored.close()
    out = _child(clean_env(**values), tmp_path)
    assert out == {
        "type": "FirestoreSession",
        "key_sha256": hashlib.sha256(AUTH).hexdigest(),
        "dc": [4, "149.154.167.91", 443],
    }
    assert not (tmp_path / "sessions").exists()  # nothing went to the (wiped) disk
