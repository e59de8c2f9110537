"""The environment factory: one switch moves a bot between a laptop and Render.

:meth:`SessionConfig.from_env` reads the variables of the original system (``USE_LOCAL_STORAGE``,
``BOT_ID``, ``BOT_TOKEN``, ``API_ID``, ``API_HASH``, ``FIREBASE_PROJECT_ID``, ``FIREBASE_CREDENTIALS``)
and the standard Google ones (``GOOGLE_CLOUD_PROJECT``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``FIRESTORE_EMULATOR_HOST``), plus ``SESSIONS_DIR``, the encryption settings (``SESSION_ENCRYPTION_KEY``,
``SESSION_ENCRYPTION_OLD_KEYS``, ``SESSION_ENCRYPT_PII``), ``SESSION_STATE_FLUSH_INTERVAL`` and
``SESSION_ENTITY_CACHE_MB``. Every value is checked there, at start-up: a bad ``API_ID``, credentials
that are not valid JSON, or Firestore without a project raise :class:`ConfigError` naming the
variable, before any session is opened.

Which backend:

1. ``USE_LOCAL_STORAGE`` set to a true value: per-user SQLite files; a false value: Firestore.
2. Otherwise, on Render (``RENDER``, ``RENDER_SERVICE_ID`` or ``RENDER_INSTANCE_ID``
   is set, as Render sets them on every service): Firestore, because Render's disk
   is wiped on every deploy and restart.
3. Otherwise: per-user SQLite files under ``SESSIONS_DIR`` (default ``sessions``).

:func:`create_session` returns the session for one user from that decision,
:func:`create_bot_session` the bot's own session (leased, see its docstring);
:func:`get_deployment_info` and :func:`log_deployment_info` say what was decided
and why, with every secret masked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from .crypto import SessionCipher
from .errors import ConfigError, InvalidSessionIdError, SessionInUseError
from .ids import BotSessionKey, validate_id

if TYPE_CHECKING:
    from google.cloud import firestore

    from .firestore import FirestoreSession
    from .manager.directory import SessionDirectory
    from .sqlite import ScopedSQLiteSession

__all__ = [
    "BACKEND_FIRESTORE",
    "BACKEND_SQLITE",
    "RENDER_VARIABLES",
    "SessionConfig",
    "create_bot_session",
    "create_session",
    "default_config",
    "get_deployment_info",
    "is_render",
    "log_deployment_info",
    "open_directory",
    "rotate_sessions",
]

log = logging.getLogger("telethon_firestore_session.config")

BACKEND_SQLITE: Final = "sqlite"
BACKEND_FIRESTORE: Final = "firestore"
Backend = Literal["sqlite", "firestore"]

#: Variables that Render sets on every service; any of them means "on Render".
RENDER_VARIABLES = ("RENDER", "RENDER_SERVICE_ID", "RENDER_INSTANCE_ID")

#: Every variable :meth:`SessionConfig.from_env` reads (the cache key of :func:`default_config`).
ENV_VARIABLES = (
    "USE_LOCAL_STORAGE",
    "BOT_ID",
    "BOT_TOKEN",
    "API_ID",
    "API_HASH",
    "SESSIONS_DIR",
    "FIREBASE_PROJECT_ID",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
    "FIREBASE_CREDENTIALS",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "FIRESTORE_EMULATOR_HOST",
    "SESSION_ENCRYPTION_KEY",
    "SESSION_ENCRYPTION_KEY_FILE",
    "SESSION_ENCRYPTION_OLD_KEYS",
    "SESSION_ENCRYPTION_OLD_KEYS_FILE",
    "SESSION_ENCRYPT_PII",
    "SESSION_STATE_FLUSH_INTERVAL",
    "SESSION_ENTITY_CACHE_MB",
    "RENDER_SERVICE_NAME",
    *RENDER_VARIABLES,
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_API_HASH = re.compile(r"^[0-9a-fA-F]{32}$")
_BOT_TOKEN = re.compile(r"^(\d{1,20}):[A-Za-z0-9_-]{20,}$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_PROJECT = re.compile(r"^[a-z][a-z0-9:.-]{0,61}[a-z0-9]$")
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")
MASK = "***"
#: The project the Firestore client uses against an emulator when none is set.
_EMULATOR_PROJECT = "google-cloud-firestore-emulator"


def _get(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value with surrounding whitespace removed; empty counts as unset."""
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _flag(env: Mapping[str, str], name: str) -> bool | None:
    value = _get(env, name)
    if value is None:
        return None
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, f"must be true or false (1/0, yes/no, on/off), not {value!r}")


def _positive(env: Mapping[str, str], name: str, unit: str) -> float | None:
    value = _get(env, name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number > 0 or math.isinf(number):
        raise ConfigError(name, f"must be a positive number of {unit}, not {value!r}")
    return number


def is_render(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on Render (any of :data:`RENDER_VARIABLES` is set).

    ``RENDER=false`` (or ``0``) alone does not count, so a local ``.env`` copied
    from a Render service can turn the detection off explicitly.

    :param environ: the variables to read; default ``os.environ``.
    """
    env = os.environ if environ is None else environ
    render = _get(env, "RENDER")
    if render is not None and render.lower() in _FALSE:
        return False
    return any(_get(env, name) is not None for name in RENDER_VARIABLES)


def mask_secret(value: str | None) -> str | None:
    """``***`` for any secret; a bot token keeps its bot id (``123456:***``), which is public."""
    if value is None:
        return None
    match = _BOT_TOKEN.match(value)
    if match:
        return f"{match.group(1)}:{MASK}"
    return MASK


class _Backend(NamedTuple):
    """One backend's entry points, bound to where its sessions live (see :func:`_backend`)."""

    #: ``session(user_id, bot_id=..., **options)``: one user's Telethon session.
    session: Callable[..., FirestoreSession | ScopedSQLiteSession]
    #: ``directory(bot_id, cipher=, encrypt_pii=, rpc_timeout=, owns_client=)``: the manager's directory.
    directory: Callable[..., SessionDirectory]
    #: ``rotate(bot_id, cipher, user_id=, encrypt_pii=)``: re-seal with the current key.
    rotate: Callable[..., int]
    #: ``bot_session(bot_id, holder=, lease_ttl=, handoff_timeout=, **options)``: the bot's own session.
    bot_session: Callable[..., FirestoreSession | ScopedSQLiteSession]


def _backend(name: str, sessions_dir: str | os.PathLike[str], client: Callable[[], firestore.Client]) -> _Backend:
    """The one place that maps a backend name to its implementation.

    ``sessions_dir`` is where SQLite files live; ``client()`` returns the Firestore
    client and is only called for Firestore. A ``client=``/``sessions_dir=`` option
    given to ``session`` wins over these.

    :raises ConfigError: ``name`` is neither ``"sqlite"`` nor ``"firestore"``.
    """
    if name == BACKEND_FIRESTORE:
        from .firestore import FirestoreSession, rotate_firestore_sessions
        from .firestore.directory import FirestoreDirectory
        from .firestore.lease import open_bot_session

        def session(user_id: str | int, **options: Any) -> FirestoreSession:
            options["client"] = options.get("client") or client()
            return FirestoreSession(user_id, **options)

        return _Backend(
            session=session,
            directory=lambda bot_id, **o: FirestoreDirectory(client(), bot_id, **o),
            rotate=lambda bot_id, cipher, **o: rotate_firestore_sessions(client(), bot_id, cipher, **o),
            bot_session=lambda bot_id, **o: open_bot_session(o.pop("client", None) or client(), bot_id, **o),
        )
    if name == BACKEND_SQLITE:
        from .sqlite import ScopedSQLiteSession, rotate_sqlite_sessions
        from .sqlite.directory import SQLiteDirectory

        def bot_session(bot_id: str, *, handoff_timeout: float, holder: str, lease_ttl: float, **o: Any) -> Any:
            # The file lock is the lease (holder and TTL do not apply): wait for a process that is stopping.
            deadline = time.monotonic() + handoff_timeout
            while True:
                try:
                    return ScopedSQLiteSession(BotSessionKey(bot_id), bot_id=bot_id, sessions_dir=sessions_dir, **o)
                except SessionInUseError:
                    if time.monotonic() >= deadline:
                        raise
                time.sleep(0.2)

        return _Backend(
            session=lambda user_id, **o: ScopedSQLiteSession(user_id, **{"sessions_dir": sessions_dir, **o}),
            # rpc_timeout and owns_client concern a Firestore client; files have neither.
            directory=lambda bot_id, rpc_timeout, owns_client, **o: SQLiteDirectory(sessions_dir, bot_id, **o),
            rotate=lambda bot_id, cipher, **o: rotate_sqlite_sessions(sessions_dir, bot_id, cipher, **o),
            bot_session=bot_session,
        )
    raise ConfigError("backend", f"must be 'sqlite' or 'firestore', not {name!r}")


def open_directory(
    backend: str,
    bot_id: str,
    *,
    sessions_dir: str | os.PathLike[str] = "sessions",
    firestore_client: firestore.Client | Callable[[], firestore.Client] | None = None,
    project: str | None = None,
    cipher: SessionCipher | None = None,
    encrypt_pii: bool = False,
    rpc_timeout: float = 10.0,
    owns_client: bool | None = None,
) -> SessionDirectory:
    """The :class:`~telethon_firestore_session.manager.directory.SessionDirectory` of one bot's sessions.

    What :class:`~telethon_firestore_session.manager.UserSessionManager` builds from
    its ``backend=`` argument; :meth:`SessionConfig.directory` is the same for a configuration.

    :param backend: ``"sqlite"`` (files under ``{sessions_dir}/{bot_id}/``) or ``"firestore"``.
    :param bot_id: the bot.
    :param sessions_dir: the directory that holds a folder per bot (SQLite).
    :param firestore_client: a client, or a function that returns one (called only for Firestore).
    :param project: without ``firestore_client``, a client is built for this project.
    :param cipher: seals the sessions (see :class:`~telethon_firestore_session.crypto.SessionCipher`).
    :param encrypt_pii: also seal entity fields (needs ``cipher``).
    :param rpc_timeout: seconds each Firestore call may take, retries included.
    :param owns_client: the directory's ``close()`` closes the client; default: if it built it.
    :raises ConfigError: for an unknown ``backend``, or ``encrypt_pii`` without ``cipher``.
    :raises InvalidSessionIdError: for a ``bot_id`` that could escape its place.
    """

    def client() -> firestore.Client:
        if firestore_client is None:
            from .firestore import make_client

            return make_client(project)
        return firestore_client() if callable(firestore_client) else firestore_client

    return _backend(backend, sessions_dir, client).directory(
        bot_id,
        cipher=cipher,
        encrypt_pii=encrypt_pii,
        rpc_timeout=rpc_timeout,
        owns_client=firestore_client is None if owns_client is None else owns_client,
    )


@dataclasses.dataclass(frozen=True, repr=False)
class SessionConfig:
    """Where sessions live and how they are opened; built by :meth:`from_env` or by hand.

    Building one by hand needs only ``bot_id``: ``SessionConfig(bot_id="mybot")``
    is the local default (SQLite files under ``sessions/mybot/``).
    ``SessionConfig(bot_id="mybot", backend="firestore", project="my-project")``
    uses Firestore with Application Default Credentials.

    Every field is validated when the object is created (:class:`ConfigError`).
    ``repr()`` masks ``api_hash``, ``bot_token``, the service-account credentials and
    the encryption key; nothing secret reaches a log through this object.

    :param bot_id: the bot (or application) whose users' sessions these are
        (``BOT_ID``; ``bots/{bot_id}/...`` in Firestore, ``{sessions_dir}/{bot_id}/`` on disk).
    :param backend: ``"sqlite"`` (per-user files) or ``"firestore"``.
    :param sessions_dir: the directory of the SQLite files (``SESSIONS_DIR``).
    :param api_id: the default Telegram API id (``API_ID``), for the session manager.
    :param api_hash: the default Telegram API hash (``API_HASH``, 32 hex digits).
    :param bot_token: the bot's token (``BOT_TOKEN``); not used by the sessions,
        kept here so that the bot reads all of its settings from one place.
    :param project: the Google Cloud / Firebase project (``FIREBASE_PROJECT_ID``,
        ``GOOGLE_CLOUD_PROJECT``, or the ``project_id`` of the credentials).
    :param credentials_info: a service-account key as a dict (``FIREBASE_CREDENTIALS``).
    :param credentials_file: a service-account key file (``GOOGLE_APPLICATION_CREDENTIALS``).
    :param emulator_host: ``host:port`` of a Firestore emulator (``FIRESTORE_EMULATOR_HOST``).
    :param cipher: seals auth keys at rest (``SESSION_ENCRYPTION_KEY``).
    :param encrypt_pii: also seal usernames, phones and names (``SESSION_ENCRYPT_PII``).
    :param state_flush_interval: seconds between writes of the update states of a session
        (``SESSION_STATE_FLUSH_INTERVAL``; ``save()`` and ``close()`` write them too).
    :param entity_cache_mb: the process-wide memory budget of cached entities in MiB
        (``SESSION_ENTITY_CACHE_MB``), set on :class:`~telethon_firestore_session.EntityBudget`
        when this configuration opens a session or a manager; ``None`` leaves it (32 MiB unless set).
    :param render: the process runs on Render (see :func:`is_render`).
    :param instance_id: this instance (``RENDER_INSTANCE_ID``, else the host name).
    :param service_id: the Render service (``RENDER_SERVICE_ID``).
    :param backend_reason: why this backend was chosen (for :func:`get_deployment_info`).
    """

    bot_id: str
    backend: Backend = BACKEND_SQLITE
    sessions_dir: Path = Path("sessions")
    api_id: int | None = None
    api_hash: str | None = None
    bot_token: str | None = None
    project: str | None = None
    credentials_info: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)
    credentials_file: str | None = None
    emulator_host: str | None = None
    cipher: SessionCipher | None = None
    encrypt_pii: bool = False
    state_flush_interval: float = 60.0
    entity_cache_mb: float | None = None
    render: bool = False
    instance_id: str | None = None
    service_id: str | None = None
    backend_reason: str = "chosen in code"
    _client: list[firestore.Client] = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)
    _client_lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        try:
            validate_id("bot_id", self.bot_id)
        except InvalidSessionIdError as exc:
            raise ConfigError("BOT_ID", str(exc)) from None
        if self.backend not in (BACKEND_SQLITE, BACKEND_FIRESTORE):
            raise ConfigError("backend", f"must be 'sqlite' or 'firestore', not {self.backend!r}")
        object.__setattr__(self, "sessions_dir", Path(self.sessions_dir))
        if self.api_id is not None and (isinstance(self.api_id, bool) or not isinstance(self.api_id, int)):
            raise ConfigError("API_ID", f"must be an integer, not {type(self.api_id).__name__}")
        if self.api_id is not None and self.api_id <= 0:
            raise ConfigError("API_ID", f"must be a positive integer, not {self.api_id}")
        if (self.api_id is None) != (self.api_hash is None):
            missing = "API_HASH" if self.api_hash is None else "API_ID"
            raise ConfigError(missing, "is not set; give both API_ID and API_HASH (from my.telegram.org), or neither")
        if self.api_hash is not None and not _API_HASH.match(self.api_hash):
            raise ConfigError("API_HASH", "must be the 32 hexadecimal digits that my.telegram.org shows")
        if self.bot_token is not None and not _BOT_TOKEN.match(self.bot_token):
            raise ConfigError("BOT_TOKEN", "must look like 123456789:AA... (the token @BotFather gave)")
        if self.emulator_host is not None and not _valid_host_port(self.emulator_host):
            raise ConfigError(
                "FIRESTORE_EMULATOR_HOST", f"must be host:port, like 127.0.0.1:8080, not {self.emulator_host!r}"
            )
        if self.project is not None and not _PROJECT.match(self.project):
            raise ConfigError(
                "FIREBASE_PROJECT_ID",
                f"{self.project!r} is not a Google Cloud project id (lowercase letters, digits and hyphens)",
            )
        if self.credentials_info is not None:
            _check_service_account(self.credentials_info)
        if self.encrypt_pii and self.cipher is None:
            raise ConfigError("SESSION_ENCRYPT_PII", "needs SESSION_ENCRYPTION_KEY: there is no key to seal with")
        for variable, value in (
            ("SESSION_STATE_FLUSH_INTERVAL", self.state_flush_interval),
            ("SESSION_ENTITY_CACHE_MB", 1.0 if self.entity_cache_mb is None else self.entity_cache_mb),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(variable, f"must be a positive number, not {value!r}")
        if self.backend == BACKEND_FIRESTORE and self.project is None and self.emulator_host is None:
            raise ConfigError(
                "FIREBASE_PROJECT_ID",
                "Firestore is the backend but no project is set; set FIREBASE_PROJECT_ID (or GOOGLE_CLOUD_PROJECT, "
                "or FIREBASE_CREDENTIALS with a project_id), or USE_LOCAL_STORAGE=true for local files",
            )

    # -- building from the environment -------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SessionConfig:
        """Read and check the configuration from the environment.

        :param environ: the variables to read; default ``os.environ``.
        :raises ConfigError: naming the variable and what is expected, for a missing
            ``BOT_ID``, an ``API_ID`` that is not a positive integer, ``FIREBASE_CREDENTIALS``
            that is not a service-account JSON object, a ``GOOGLE_APPLICATION_CREDENTIALS``
            file that does not exist, Firestore without a project, or a malformed key.
            Secret values are never part of the message.
        """
        env = os.environ if environ is None else environ
        bot_id = _get(env, "BOT_ID")
        if bot_id is None:
            raise ConfigError("BOT_ID", "is not set; name the bot whose sessions these are (e.g. BOT_ID=mybot_local)")
        render = is_render(env)
        use_local = _flag(env, "USE_LOCAL_STORAGE")
        backend: Backend
        if use_local is not None:
            backend = BACKEND_SQLITE if use_local else BACKEND_FIRESTORE
            reason = f"USE_LOCAL_STORAGE={'true' if use_local else 'false'}"
        elif render:
            backend = BACKEND_FIRESTORE
            reason = "running on Render (its disk is wiped on restart)"
        else:
            backend = BACKEND_SQLITE
            reason = "default (not on Render)"

        api_id: int | None = None
        raw_api_id = _get(env, "API_ID")
        if raw_api_id is not None:
            try:
                api_id = int(raw_api_id)
            except ValueError:
                raise ConfigError("API_ID", f"must be an integer (from my.telegram.org), not {raw_api_id!r}") from None

        credentials_info = _credentials_from_json(_get(env, "FIREBASE_CREDENTIALS"))
        credentials_file = _get(env, "GOOGLE_APPLICATION_CREDENTIALS")
        if credentials_file is not None and not Path(credentials_file).is_file():
            raise ConfigError(
                "GOOGLE_APPLICATION_CREDENTIALS", f"names {credentials_file!r}, which is not a readable file"
            )
        project = (
            _get(env, "FIREBASE_PROJECT_ID")
            or _get(env, "GOOGLE_CLOUD_PROJECT")
            or _get(env, "GCLOUD_PROJECT")
            or (
                str(credentials_info["project_id"]) if credentials_info and credentials_info.get("project_id") else None
            )
        )
        encrypt_pii = bool(_flag(env, "SESSION_ENCRYPT_PII"))
        return cls(
            bot_id=bot_id,
            backend=backend,
            sessions_dir=Path(_get(env, "SESSIONS_DIR") or "sessions"),
            api_id=api_id,
            api_hash=_get(env, "API_HASH"),
            bot_token=_get(env, "BOT_TOKEN"),
            project=project,
            credentials_info=credentials_info,
            credentials_file=credentials_file,
            emulator_host=_get(env, "FIRESTORE_EMULATOR_HOST"),
            cipher=SessionCipher.from_env(env),
            encrypt_pii=encrypt_pii,
            state_flush_interval=_positive(env, "SESSION_STATE_FLUSH_INTERVAL", "seconds") or 60.0,
            entity_cache_mb=_positive(env, "SESSION_ENTITY_CACHE_MB", "MiB"),
            render=render,
            instance_id=_get(env, "RENDER_INSTANCE_ID") or socket.gethostname() or None,
            service_id=_get(env, "RENDER_SERVICE_ID"),
            backend_reason=reason,
        )

    # -- what is built from it ----------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        """Sessions live in local files (the SQLite backend)."""
        return self.backend == BACKEND_SQLITE

    def firestore_client(self) -> firestore.Client:
        """The Firestore client of this configuration, built on first use and then shared.

        Credentials: the emulator needs none; otherwise ``credentials_info``
        (``FIREBASE_CREDENTIALS``), else Application Default Credentials (which read
        ``GOOGLE_APPLICATION_CREDENTIALS``). The client lives as long as the process;
        sessions and managers built from this configuration share it.
        """
        with self._client_lock:
            if not self._client:
                self._client.append(self._build_client())
            return self._client[0]

    def _build_client(self) -> firestore.Client:
        from .firestore import make_client

        credentials: Any = None
        project = self.project
        if self.emulator_host is not None:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            project = project or _EMULATOR_PROJECT
        elif self.credentials_info is not None:
            credentials = _service_account_credentials(self.credentials_info)
        if self.emulator_host is not None and os.environ.get("FIRESTORE_EMULATOR_HOST") != self.emulator_host:
            # google-cloud-firestore reads the emulator's address from os.environ only (no public
            # parameter takes one), and changing os.environ here would redirect every client of the process.
            raise ConfigError(
                "FIRESTORE_EMULATOR_HOST",
                f"this configuration names the emulator {self.emulator_host}, but google-cloud-firestore only "
                "reads it from the process environment: set FIRESTORE_EMULATOR_HOST there (or pass your own "
                "firestore_client)",
            )
        return make_client(project, credentials)

    def session_options(self) -> dict[str, Any]:
        """The keyword arguments that every session of this configuration gets (cipher, PII sealing)."""
        options: dict[str, Any] = {}
        if self.cipher is not None:
            options["cipher"] = self.cipher
            options["encrypt_pii"] = self.encrypt_pii
        return options

    def create_session(self, user_id: str | int, **options: Any) -> FirestoreSession | ScopedSQLiteSession:
        """The session of ``user_id`` in this configuration's backend; see :func:`create_session`.

        :param user_id: the user.
        """
        from .entities import EntityBudget

        EntityBudget.configure(self.entity_cache_mb)
        kwargs = {**self.session_options(), "state_flush_interval": self.state_flush_interval, **options}
        return self._backend().session(user_id, bot_id=self.bot_id, **kwargs)

    def create_bot_session(
        self, *, handoff_timeout: float = 15.0, lease_ttl: float = 60.0, **options: Any
    ) -> FirestoreSession | ScopedSQLiteSession:
        """The bot's own session in this configuration's backend; see :func:`create_bot_session`.

        :param handoff_timeout: see :func:`create_bot_session`.
        :param lease_ttl: see :func:`create_bot_session`.
        """
        kwargs = {**self.session_options(), **options}
        backend = self._backend()
        return backend.bot_session(
            self.bot_id, holder=self.holder_id(), lease_ttl=lease_ttl, handoff_timeout=handoff_timeout, **kwargs
        )

    def holder_id(self) -> str:
        """A new name for a lease holder of this instance: ``{instance_id}:{pid}:{random}``.

        ``instance_id`` is ``RENDER_INSTANCE_ID`` on Render, else the host name.
        """
        return f"{self.instance_id or socket.gethostname() or 'host'}:{os.getpid()}:{secrets.token_hex(4)}"

    def directory(
        self, *, firestore_client: firestore.Client | None = None, rpc_timeout: float = 10.0, owns_client: bool = False
    ) -> SessionDirectory:
        """The blocking :class:`~telethon_firestore_session.manager.directory.SessionDirectory`
        of this configuration's sessions (users, records, cleanup); see :func:`open_directory`.

        :param firestore_client: the client Firestore uses; default :meth:`firestore_client`.
        :param rpc_timeout: seconds each Firestore call may take, retries included.
        :param owns_client: the directory's ``close()`` closes that client.
        """
        return open_directory(
            self.backend,
            self.bot_id,
            sessions_dir=self.sessions_dir,
            firestore_client=firestore_client or self.firestore_client,
            cipher=self.cipher,
            encrypt_pii=self.encrypt_pii,
            rpc_timeout=rpc_timeout,
            owns_client=owns_client,
        )

    def _backend(self, firestore_client: firestore.Client | None = None) -> _Backend:
        return _backend(self.backend, self.sessions_dir, lambda: firestore_client or self.firestore_client())

    def deployment_info(self) -> dict[str, Any]:
        """See :func:`get_deployment_info`."""
        info: dict[str, Any] = {
            "is_render": self.render,
            "is_local": not self.render,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "bot_id": self.bot_id,
        }
        if self.backend == BACKEND_SQLITE:
            info["sessions_dir"] = str(self.sessions_dir.resolve())
        else:
            info["project"] = self.project or "(emulator default)"
            info["credentials"] = self._credentials_source()
        info["emulator"] = self.emulator_host
        info["instance_id"] = self.instance_id
        info["service_id"] = self.service_id
        info["encryption"] = self.cipher is not None
        info["encrypt_pii"] = self.encrypt_pii
        info["key_id"] = self.cipher.key_id if self.cipher is not None else None
        info["api_id"] = self.api_id
        info["api_hash"] = mask_secret(self.api_hash)
        info["bot_token"] = mask_secret(self.bot_token)
        return info

    def _credentials_source(self) -> str:
        if self.emulator_host is not None:
            return "none (emulator)"
        if self.credentials_info is not None:
            return f"FIREBASE_CREDENTIALS (service account {self.credentials_info.get('client_email', '?')})"
        if self.credentials_file is not None:
            return f"GOOGLE_APPLICATION_CREDENTIALS ({self.credentials_file})"
        return "application default credentials"

    def __repr__(self) -> str:
        parts = [f"bot_id={self.bot_id!r}", f"backend={self.backend!r}"]
        if self.backend == BACKEND_SQLITE:
            parts.append(f"sessions_dir={str(self.sessions_dir)!r}")
        else:
            parts.append(f"project={self.project!r}")
            parts.append(f"credentials={self._credentials_source()!r}")
        if self.emulator_host is not None:
            parts.append(f"emulator_host={self.emulator_host!r}")
        if self.api_id is not None:
            parts.append(f"api_id={self.api_id}")
            parts.append(f"api_hash={mask_secret(self.api_hash)!r}")
        if self.bot_token is not None:
            parts.append(f"bot_token={mask_secret(self.bot_token)!r}")
        parts.append(f"cipher={self.cipher!r}")
        if self.encrypt_pii:
            parts.append("encrypt_pii=True")
        parts.append(f"render={self.render}")
        return f"SessionConfig({', '.join(parts)})"


def _valid_host_port(value: str) -> bool:
    match = _HOST_PORT.match(value)
    return match is not None and 0 < int(match.group(2)) < 65536


def _check_service_account(info: Mapping[str, Any]) -> None:
    if not isinstance(info, Mapping):
        raise ConfigError("FIREBASE_CREDENTIALS", "must be a JSON object (the service-account key file's content)")
    kind = info.get("type")
    if kind != "service_account":
        raise ConfigError(
            "FIREBASE_CREDENTIALS",
            f'must be a service-account key ("type": "service_account"), not type {kind!r}; '
            "create one in the Firebase console under Project settings > Service accounts",
        )
    missing = [f for f in _SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(f), str) or not info.get(f)]
    if missing:
        raise ConfigError("FIREBASE_CREDENTIALS", f"the service-account key lacks {', '.join(missing)}")


def _credentials_from_json(text: str | None) -> dict[str, Any] | None:
    """Parse ``FIREBASE_CREDENTIALS``, and build the credentials once so that a bad key fails now."""
    if text is None:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        # The message carries the position only, never the document.
        raise ConfigError(
            "FIREBASE_CREDENTIALS",
            f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "paste the whole service-account key file as one line",
        ) from None
    if not isinstance(info, dict):
        raise ConfigError("FIREBASE_CREDENTIALS", "must be a JSON object (the service-account key file's content)")
    _check_service_account(info)
    _service_account_credentials(info)
    return info


def _service_account_credentials(info: Mapping[str, Any]) -> Any:
    from google.oauth2 import service_account

    try:
        return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(info), scopes=["https://www.googleapis.com/auth/datastore"]
        )
    except Exception as exc:  # noqa: BLE001 - google-auth raises ValueError, TypeError or its own errors
        # The original message may quote the key; only its type is reported.
        raise ConfigError(
            "FIREBASE_CREDENTIALS", f"holds a service-account key that cannot be loaded ({type(exc).__name__})"
        ) from None


# -- module-level helpers ---------------------------------------------------------------------

_default_lock = threading.Lock()
_default: tuple[tuple[str | None, ...], SessionConfig] | None = None


def default_config() -> SessionConfig:
    """``SessionConfig.from_env()``, read once and reused while the environment is unchanged.

    Sessions made by :func:`create_session` without a ``config`` therefore share one
    Firestore client (one connection) for the whole process.
    """
    global _default
    snapshot = tuple(os.environ.get(name) for name in ENV_VARIABLES)
    with _default_lock:
        if _default is None or _default[0] != snapshot:
            _default = (snapshot, SessionConfig.from_env())
        return _default[1]


def create_session(
    user_id: str | int, config: SessionConfig | None = None, **options: Any
) -> FirestoreSession | ScopedSQLiteSession:
    """The session of ``user_id``, in the backend that the environment (or ``config``) chooses.

    ``TelegramClient(create_session(user_id), api_id, api_hash)`` then starts with the user's stored
    auth key and DC, locally or on Render alike. ``options`` go to the session class
    (``flush_interval=``, ``close_timeout=``...). Blocks while the session is read.

    :param user_id: the user.
    :param config: the configuration; default the environment's (:func:`default_config`).
    :raises ConfigError: for a missing or invalid setting.
    :raises InvalidSessionIdError: for a ``user_id`` that could escape its place.
    """
    return (config or default_config()).create_session(user_id, **options)


def create_bot_session(
    config: SessionConfig | None = None, *, handoff_timeout: float = 15.0, lease_ttl: float = 60.0, **options: Any
) -> FirestoreSession | ScopedSQLiteSession:
    """The bot's own Telethon session, stored next to its users' but outside their namespace.

    ``TelegramClient(create_bot_session(), api_id, api_hash, catch_up=True)`` keeps the
    bot's auth key, DC and update state across restarts, so a restart neither logs
    the bot in again nor misses the updates sent while it was down (``catch_up``).

    * Firestore: ``bots/{bot_id}/bot_session/session`` (with ``entities`` and
      ``sent_files``; ``firestore.rules`` denies clients all of it). The session is
      leased before it is read: while another live instance holds it, that instance
      is asked to hand it over (it does so at once when it runs
      :meth:`UserSessionManager.start_bot`). The lease is renewed by the background
      writer, fences the session's writes and is released when the session closes.
    * SQLite: ``{sessions_dir}/{bot_id}/bot.session``, locked while open; a lock held by
      another process (a stopping one releases it) is waited for, without asking.

    Blocks (call it before the event loop starts, or accept the wait). ``options`` go to
    the session class, as in :func:`create_session`.

    :param config: the configuration; default the environment's (:func:`default_config`).
    :param handoff_timeout: seconds to wait for the instance (or process) holding it.
    :param lease_ttl: seconds the Firestore lease lasts unless renewed (the writer renews it).
    :raises SessionInUseError: still held elsewhere after ``handoff_timeout``.
    :raises ConfigError: for a missing or invalid setting.
    """
    return (config or default_config()).create_bot_session(
        handoff_timeout=handoff_timeout, lease_ttl=lease_ttl, **options
    )


def get_deployment_info(config: SessionConfig | None = None) -> dict[str, Any]:
    """Where this process runs and where its sessions live, secrets masked.

    Keys: ``is_render``, ``is_local`` (not on Render), ``backend`` (``sqlite`` or
    ``firestore``) and ``backend_reason``, ``bot_id``, ``sessions_dir`` (SQLite) or
    ``project`` and ``credentials`` (Firestore), ``emulator``, ``instance_id``,
    ``service_id``, ``encryption``, ``encrypt_pii``, ``key_id``, ``api_id``, and
    ``api_hash``/``bot_token`` as ``***`` (``None`` when unset).

    :param config: the configuration; default the environment's (:func:`default_config`).
    """
    return (config or default_config()).deployment_info()


def log_deployment_info(
    config: SessionConfig | None = None, *, logger: logging.Logger | None = None, level: int = logging.INFO
) -> dict[str, Any]:
    """Log :func:`get_deployment_info` (one record, secrets masked) and return it.

    :param config: the configuration; default the environment's (:func:`default_config`).
    :param logger: where to log; default this package's logger.
    :param level: the record's level.
    """
    info = get_deployment_info(config)
    text = ", ".join(f"{k}={v}" for k, v in info.items())
    (logger or log).log(level, "deployment: %s", text)
    return info


def rotate_sessions(config: SessionConfig | None = None, *, user_id: str | int | None = None) -> int:
    """Re-seal one user's session, or every session of the bot, with the current key.

    Values sealed with a key in ``SESSION_ENCRYPTION_OLD_KEYS`` and plaintext values
    written before encryption was on are sealed with ``SESSION_ENCRYPTION_KEY``;
    with ``SESSION_ENCRYPT_PII`` entity usernames, phones and names are sealed too.
    Blocks the calling thread (from async code: ``asyncio.to_thread``).

    :param config: the configuration; default the environment's (:func:`default_config`).
    :param user_id: only this user's session; default every session of the bot.
    :returns: the number of sessions re-sealed.
    :raises ConfigError: if no encryption key is configured.
    :raises SessionRotationError: listing the sessions that could not be re-sealed
        (the others are done; those are left exactly as they were).
    """
    cfg = config or default_config()
    if cfg.cipher is None:
        raise ConfigError("SESSION_ENCRYPTION_KEY", "is not set: there is no key to re-seal with")
    return cfg._backend().rotate(cfg.bot_id, cfg.cipher, user_id=user_id, encrypt_pii=cfg.encrypt_pii)
