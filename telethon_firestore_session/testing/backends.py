"""The backends the contracts run on: Telethon's own sessions (the references) and this library's.

A :class:`SessionBackend` makes sessions of one kind for :class:`~.session.SessionContract`
(and, for sessions built on ``SessionCore`` with a store, :class:`~.store.StoreContract`).
:class:`FirestoreBackend` and :class:`ScopedSQLiteBackend` also make sessions with options of
their own (:meth:`session`), as an :class:`~.encryption.EncryptionBackend` needs; the test
suite's ``tests/contract/storage.py`` adds what only each store knows.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from telethon.sessions import MemorySession, SQLiteSession
from telethon.sessions.abstract import Session
from telethon.tl import types

from telethon_firestore_session.core import SessionCore

from .cases import Deviation, input_channel, input_user

__all__ = [
    "Deviation",
    "FirestoreBackend",
    "MemorySessionBackend",
    "SQLiteSessionBackend",
    "ScopedSQLiteBackend",
    "SessionBackend",
    "SessionCoreBackend",
]


class SessionBackend(abc.ABC):
    """How the contract suite makes sessions of one kind. Subclass it for your store.

    :meth:`make_session` constructs a session on the backend's storage (the same
    storage every time, so a second call opens what the first one stored).
    :meth:`reopen` closes a session and constructs it again; for backends that
    are not ``persistent`` it returns the same object. Use the backend as a
    context manager (or call :meth:`cleanup`) to close every session it made.
    """

    #: Name shown in failure messages.
    name: ClassVar[str] = "?"
    #: Whether a session survives ``close()`` and construction on the same storage.
    persistent: ClassVar[bool] = True
    #: Known deviations, by test name (entity case name, ``"sent_files"``, ...).
    deviations: ClassVar[Mapping[str, Deviation]] = {}

    def __init__(self) -> None:
        self._sessions: list[Session] = []

    @abc.abstractmethod
    def make_session(self) -> Session:
        """Construct a session on this backend's storage."""

    def reopen(self, session: Session) -> Session:
        """Close ``session`` (as ``TelegramClient.disconnect()`` does) and construct it again.

        :param session: a session this backend made.
        """
        if not self.persistent:
            return session
        session.close()
        return self.make_session()

    # -- used by the suite ---------------------------------------------------------------------

    def open(self) -> Session:
        """A session from :meth:`make_session`, closed again by :meth:`cleanup`."""
        session = self.make_session()
        self._sessions.append(session)
        return session

    def open_again(self, session: Session) -> Session:
        """:meth:`reopen`, tracked for :meth:`cleanup`.

        :param session: a session this backend made.
        """
        again = self.reopen(session)
        if again is not session:
            self._sessions.append(again)
        return again

    def deviation(self, test: str) -> Deviation | None:
        """The known deviation of this backend for ``test``, if any.

        :param test: an entity case name, ``"sent_files"``, ...
        """
        return self.deviations.get(test)

    def cleanup(self) -> None:
        """Close every session this backend made (newest first)."""
        while self._sessions:
            self._sessions.pop().close()

    def __enter__(self) -> SessionBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


_TYPE_ERROR_GET_FILE = Deviation(
    "get_file() calls cls(id, access_hash), but InputDocument and InputPhoto require file_reference "
    "since layer 108, so every cache hit raises TypeError; the correct answer is cls(id, access_hash, b'')"
)
_SET_ORDER = "MemorySession keeps every row it ever saw in a set; which stale row a lookup finds depends on set order"


class MemorySessionBackend(SessionBackend):
    """Telethon's ``MemorySession``, the reference (not persistent)."""

    name = "telethon-memory"
    persistent = False
    deviations: ClassVar[Mapping[str, Deviation]] = {
        "username_renamed": Deviation(
            "MemorySession never drops the row with the old username, so a name the user gave up still resolves"
        ),
        "username_moves": Deviation(
            _SET_ORDER,
            either={
                "'shared'": (input_user(802),),
                "'@SHARED'": (input_user(802),),
                "'t.me/shared'": (input_user(802),),
            },
        ),
        "username_moves_after_rename": Deviation(_SET_ORDER, either={"'taken'": (input_user(901),)}),
        "phone_changed": Deviation("MemorySession never drops the row with the old phone, so it still resolves"),
        "phone_moves": Deviation(
            _SET_ORDER, either={"'+15551100'": (input_user(1101),), "'+1 (555) 110-0'": (input_user(1101),)}
        ),
        "name_changed": Deviation("MemorySession never drops the row with the old display name, so it still resolves"),
        "channel_renamed": Deviation("MemorySession never drops the row with the old title and username"),
        "duplicate_names": Deviation(_SET_ORDER, either={"'Dana'": (input_user(1401),)}),
        "bare_ids": Deviation(
            "a bare id is looked up as user, chat and channel at once; the first row in set order wins",
            either={"5": (types.InputPeerChat(5), input_channel(5))},
        ),
        "bare_chat_and_channel": Deviation(
            "a bare id is looked up as chat and channel at once; the first row in set order wins",
            either={"6": (input_channel(6),)},
        ),
        "access_hash_changes": Deviation(
            _SET_ORDER,
            either={"1501": (types.InputPeerUser(1501, 1),), "'hashy'": (types.InputPeerUser(1501, 1),)},
        ),
        "sent_files": _TYPE_ERROR_GET_FILE,
        "save_entities": Deviation("MemorySession ignores save_entities = False and stores every entity"),
    }

    def make_session(self) -> Session:
        return MemorySession()


class SQLiteSessionBackend(SessionBackend):
    """Telethon's ``SQLiteSession`` on a file in ``directory``, the persistent reference.

    :param directory: where its file is made.
    """

    name = "telethon-sqlite"
    deviations: ClassVar[Mapping[str, Deviation]] = {
        "username_moves": Deviation(
            "every row of one process_entities() call gets the same date (in whole seconds); among rows of one "
            "date with the same username the highest id wins (stable sort in rowid order), not the newest owner"
        ),
        "phone_moves": Deviation(
            "'select id, hash from entities where phone = ?' returns the lowest id; the old owner keeps the phone"
        ),
        "duplicate_names": Deviation("'where name = ?' returns the lowest id, not the most recently seen entity"),
        "bare_ids": Deviation(
            "'where id in (user, chat, channel)' returns the lowest marked id: channel, then chat, then user"
        ),
        "bare_chat_and_channel": Deviation("'where id in (...)' returns the lowest marked id: the channel"),
        "sent_files": _TYPE_ERROR_GET_FILE,
    }

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.path.join(os.fspath(directory), "telethon-reference")

    def make_session(self) -> Session:
        return SQLiteSession(self.path)


class SessionCoreBackend(SessionBackend):
    """This library's :class:`SessionCore` without a store (in memory)."""

    name = "session-core"
    persistent = False

    def make_session(self) -> Session:
        return SessionCore()


class _StoreBackend(SessionBackend):
    """A store of this library: sessions of ``bot_id`` with ``options`` (and per-session overrides)."""

    def __init__(self, bot_id: str, user_id: str, options: dict[str, Any]) -> None:
        super().__init__()
        self.bot_id = bot_id
        self.user_id = user_id
        self.options = options

    @abc.abstractmethod
    def construct(self, user_id: str, bot_id: str, **options: Any) -> Session:
        """A session of this store."""

    def make_session(self) -> Session:
        return self.construct(self.user_id, self.bot_id, **self.options)

    def session(self, user_id: str = "42", *, bot_id: str | None = None, **options: Any) -> Session:
        made = self.construct(user_id, bot_id or self.bot_id, **{**self.options, **options})
        self._sessions.append(made)
        return made


class FirestoreBackend(_StoreBackend):
    """:class:`~telethon_firestore_session.FirestoreSession` on ``client`` (the emulator in tests).

    ``options`` go to every session (e.g. ``cipher=SessionCipher(key), encrypt_pii=True``).

    :param client: the Firestore client.
    :param bot_id: the bot of the sessions.
    :param user_id: the user of :meth:`make_session`'s session.
    """

    name = "firestore"

    def __init__(self, client: Any, bot_id: str, user_id: str = "42", **options: Any) -> None:
        super().__init__(bot_id, user_id, options)
        self.client = client

    def construct(self, user_id: str, bot_id: str, **options: Any) -> Session:
        from telethon_firestore_session.firestore import FirestoreSession

        return FirestoreSession(user_id, bot_id=bot_id, client=self.client, **options)


class ScopedSQLiteBackend(_StoreBackend):
    """:class:`~telethon_firestore_session.sqlite.ScopedSQLiteSession` in ``sessions_dir``.

    ``options`` go to every session (e.g. ``cipher=SessionCipher(key), encrypt_pii=True``).

    :param sessions_dir: the directory that holds a folder per bot.
    :param bot_id: the bot of the sessions.
    :param user_id: the user of :meth:`make_session`'s session.
    """

    name = "scoped-sqlite"

    def __init__(
        self, sessions_dir: str | os.PathLike[str], bot_id: str = "bot", user_id: str = "42", **options: Any
    ) -> None:
        super().__init__(bot_id, user_id, options)
        self.sessions_dir = sessions_dir

    def construct(self, user_id: str, bot_id: str, **options: Any) -> Session:
        from telethon_firestore_session.sqlite import ScopedSQLiteSession

        return ScopedSQLiteSession(user_id, bot_id=bot_id, sessions_dir=self.sessions_dir, **options)
