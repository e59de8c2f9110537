"""A contract suite for Telethon session stores: one suite, every backend.

Telethon's own ``MemorySession`` and ``SQLiteSession`` are the reference for what
a session answers. This module feeds every backend the same histories of real
``telethon.tl.types`` objects and checks that ``get_input_entity``, update states,
the sent-file cache, the DC, the auth key and the takeout id come back the same,
including after the session is closed and constructed again. Where Telethon's
own backends are wrong, the expected answer is the correct one and the
reference is marked with a :class:`Deviation` (a strict ``xfail``, or a
documented branch when its answer depends on ``set`` iteration order).

Use it for your own session store (needs ``pytest``; this module is only
imported by tests, never by the package itself)::

    import pytest
    from telethon_firestore_session.testing import SessionBackend, SessionContract

    class MyBackend(SessionBackend):
        name = "mine"
        persistent = True  # reopen() closes the session and constructs it again

        def __init__(self, path):
            super().__init__()
            self.path = path

        def make_session(self):
            return MySession(self.path)

    @pytest.fixture
    def session_backend(tmp_path):
        with MyBackend(tmp_path / "s") as backend:  # closes every session it made
            yield backend

    class TestMySession(SessionContract):
        pass

Sessions built on :class:`~telethon_firestore_session.SessionCore` with a store
can also run :class:`StoreContract` (dirty tracking, write-behind, lazy
lookups, cached misses) with a ``store_backend`` fixture.

The tests call the session's methods synchronously and expect plain return
values, as Telethon's own sessions give.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pytest
from telethon import utils
from telethon.crypto import AuthKey
from telethon.sessions import MemorySession, SQLiteSession
from telethon.sessions.abstract import Session
from telethon.tl import types
from telethon.tl.tlobject import TLObject

from telethon_firestore_session.core import SessionCore, Store

__all__ = [
    "ENTITY_CASES",
    "MISS",
    "Deviation",
    "EntityCase",
    "FirestoreBackend",
    "MemorySessionBackend",
    "SQLiteSessionBackend",
    "ScopedSQLiteBackend",
    "SessionBackend",
    "SessionContract",
    "SessionCoreBackend",
    "StoreContract",
    "StoreProbe",
    "answer",
    "describe",
    "feed",
]

UTC = datetime.timezone.utc
DATE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class _Miss:
    """The expected answer when ``get_input_entity`` must raise ``ValueError``."""

    def __repr__(self) -> str:
        return "MISS"


#: Expected answer of a query that must raise ``ValueError`` (Telethon then asks Telegram).
MISS = _Miss()


# -- histories -------------------------------------------------------------------------------


def _user(uid: int, **kw: Any) -> types.User:
    kw.setdefault("access_hash", uid * 1000 + 7)
    return types.User(uid, **kw)


def _chat(cid: int, title: str) -> types.Chat:
    return types.Chat(cid, title, types.ChatPhotoEmpty(), participants_count=3, date=DATE, version=1)


def _channel(cid: int, title: str, **kw: Any) -> types.Channel:
    kw.setdefault("access_hash", cid * 1000 + 9)
    return types.Channel(cid, title, types.ChatPhotoEmpty(), DATE, **kw)


def _iu(uid: int) -> types.InputPeerUser:
    return types.InputPeerUser(uid, uid * 1000 + 7)


def _ic(cid: int) -> types.InputPeerChannel:
    return types.InputPeerChannel(cid, cid * 1000 + 9)


def _updates(users: Sequence[Any] = (), chats: Sequence[Any] = ()) -> types.Updates:
    return types.Updates(updates=[], users=list(users), chats=list(chats), date=DATE, seq=0)


def _invite_link(chat_id: int) -> str:
    """An old-style ``t.me/joinchat/`` link, which encodes the chat id."""
    payload = struct.pack(">LLQ", 777, chat_id, 0x1234)  # creator id, chat id, random
    return "https://t.me/joinchat/" + str(utils._encode_telegram_base64(payload))


@dataclasses.dataclass(frozen=True)
class EntityCase:
    """A history of objects given to ``process_entities``, and what lookups must answer.

    ``queries`` pairs a ``get_input_entity`` key with the expected ``InputPeer*``
    (or :data:`MISS`). Persistent backends answer them in the same session, then
    after a reopen, then after another reopen in reverse order (so a lazily loaded
    entity cannot change a later answer).
    """

    name: str
    doc: str
    history: tuple[Any, ...]
    queries: tuple[tuple[Any, Any], ...]
    #: Feed the history within one wall-clock second (Telethon dates rows in seconds).
    same_second: bool = False
    #: Also check the answers after a reopen (False where the answer is unspecified there).
    check_reopened: bool = True


_ALICE = _user(101, username="Alice", phone="15550001", first_name="Alice", last_name="Smith")
_BOB = _user(102, first_name="Bob")

ENTITY_CASES: tuple[EntityCase, ...] = (
    EntityCase(
        "users",
        "Users from an Updates object; ids, peers, usernames in every spelling, phones in every format, names.",
        (_updates(users=[_ALICE, _BOB]),),
        (
            (101, _iu(101)),
            (102, _iu(102)),
            (types.PeerUser(101), _iu(101)),
            (types.InputPeerUser(999, 5), types.InputPeerUser(999, 5)),  # input peers come back as they are
            (types.InputUser(101, 1), types.InputUser(101, 1)),
            (_ALICE, _iu(101)),  # a full User is turned into its input peer without a lookup
            (_user(101, access_hash=None, min=True), _iu(101)),  # a min User is looked up by id
            ("alice", _iu(101)),
            ("@alice", _iu(101)),
            ("@ALICE", _iu(101)),
            ("AlIcE", _iu(101)),
            ("t.me/alice", _iu(101)),
            ("https://t.me/Alice", _iu(101)),
            ("https://telegram.me/alice/", _iu(101)),
            ("+15550001", _iu(101)),
            ("15550001", _iu(101)),
            ("+1 555-0001", _iu(101)),
            ("(155) 500 01", _iu(101)),
            (15550001, MISS),  # an int is always an id, never a phone
            ("Alice Smith", _iu(101)),
            ("alice smith", MISS),  # display names are matched exactly
            ("Bob", _iu(102)),
            ("101", MISS),  # a digit string is a phone (then a name), never an id
            (-101, MISS),  # a negative id is a chat or channel
            (999, MISS),
            (types.PeerUser(999), MISS),
            ("nobody", MISS),
            ("@nobody", MISS),
            ("+999 000", MISS),
        ),
    ),
    EntityCase(
        "chats_and_channels",
        "Chats, channels, megagroups and forbidden ones: marked and bare ids, peers, usernames, titles, invite links.",
        (
            _updates(
                chats=[
                    _chat(201, "Group"),
                    _channel(301, "News", username="NewsChan", broadcast=True),
                    _channel(302, "Talk", megagroup=True),
                    types.ChatForbidden(202, "Old group"),
                    types.ChannelForbidden(303, 303 * 1000 + 9, "Banned"),
                ]
            ),
        ),
        (
            (-201, types.InputPeerChat(201)),
            (201, types.InputPeerChat(201)),
            (types.PeerChat(201), types.InputPeerChat(201)),
            (-1000000000301, _ic(301)),
            (301, _ic(301)),
            (types.PeerChannel(301), _ic(301)),
            (types.PeerChannel(302), _ic(302)),
            (types.InputPeerChannel(301, 0), types.InputPeerChannel(301, 0)),
            ("newschan", _ic(301)),
            ("@NewsChan", _ic(301)),
            ("https://t.me/newschan", _ic(301)),
            ("News", _ic(301)),
            ("Talk", _ic(302)),
            ("Group", types.InputPeerChat(201)),
            (-202, types.InputPeerChat(202)),
            ("Old group", types.InputPeerChat(202)),
            (types.PeerChannel(303), _ic(303)),
            ("Banned", _ic(303)),
            (_invite_link(201), types.InputPeerChat(201)),
            (_invite_link(301), _ic(301)),
            (_invite_link(404), MISS),
            (-1000000000201, MISS),
            (-301, MISS),
        ),
    ),
    EntityCase(
        "ignored_entities",
        "Min users and channels, users without an access hash, empty objects and peers are never stored; "
        "a min copy of a known user does not replace it.",
        (
            [
                _user(401, username="full", first_name="Full"),
                _user(402, access_hash=None, username="nohash", phone="15550402", first_name="NoHash"),
                _user(403, access_hash=1, min=True, username="minuser", phone="15550403"),
                _channel(404, "Min channel", min=True, username="minchan"),
                _channel(405, "No hash", access_hash=None, username="nohashchan"),
                types.UserEmpty(406),
                types.PeerUser(407),
            ],
            [_user(401, access_hash=555, min=True, username="changed", first_name="Changed")],
        ),
        (
            (401, _iu(401)),
            ("full", _iu(401)),
            ("Full", _iu(401)),
            ("changed", MISS),
            ("Changed", MISS),
            (402, MISS),
            ("nohash", MISS),
            ("+15550402", MISS),
            (403, MISS),
            ("minuser", MISS),
            ("+15550403", MISS),
            (404, MISS),
            ("minchan", MISS),
            (405, MISS),
            ("nohashchan", MISS),
            (406, MISS),
            (407, MISS),
        ),
    ),
    EntityCase(
        "own_user",
        "TelegramClient stores its own user as id 0 with the real id as access hash.",
        (
            types.contacts.ResolvedPeer(None, [types.InputPeerUser(0, 500)], []),
            types.users.UserFull(
                types.UserFull(500, types.PeerSettings(), types.PeerNotifySettings(), 0),
                [],
                [_user(500, is_self=True, username="myself", phone="15550500", first_name="Me")],
            ),
        ),
        (
            (0, types.InputPeerUser(0, 500)),
            (types.PeerUser(0), types.InputPeerUser(0, 500)),
            (500, _iu(500)),
            ("myself", _iu(500)),
            ("+1 555 0500", _iu(500)),
            ("Me", _iu(500)),
            (_user(500, is_self=True), types.InputPeerSelf()),
        ),
    ),
    EntityCase(
        "containers",
        "Every container Telethon hands over: ResolvedPeer, messages.Chats, UpdatesCombined, ChatFull, "
        "plain lists; a bare User is not a container.",
        (
            types.contacts.ResolvedPeer(types.PeerUser(601), [], [_user(601, username="resolved")]),
            types.messages.Chats([_channel(602, "Listed")]),
            types.UpdatesCombined([], [_user(603, first_name="Combined")], [_chat(604, "Combo")], DATE, 0, 0),
            types.messages.ChatFull(
                types.ChatFull(604, "", types.ChatParticipantsForbidden(604), types.PeerNotifySettings()),
                [_chat(604, "Combo renamed")],
                [_user(605, first_name="Member")],
            ),
            [_user(606, phone="15550606")],
            _user(607, username="bareuser"),
        ),
        (
            ("resolved", _iu(601)),
            (602, _ic(602)),
            ("Combined", _iu(603)),
            ("Combo renamed", types.InputPeerChat(604)),
            (605, _iu(605)),
            ("+15550606", _iu(606)),
            (607, MISS),
            ("bareuser", MISS),
        ),
    ),
    EntityCase(
        "username_renamed",
        "A username the user gave up no longer resolves to them.",
        ([_user(701, username="OldName")], [_user(701, username="NewName")]),
        (("oldname", MISS), ("@NewName", _iu(701)), (701, _iu(701))),
    ),
    EntityCase(
        "username_moves",
        "A username taken over by another user resolves to the newest owner, even within one second.",
        ([_user(802, username="shared")], [_user(801, username="Shared")]),
        (("shared", _iu(801)), ("@SHARED", _iu(801)), ("t.me/shared", _iu(801)), (802, _iu(802)), (801, _iu(801))),
        same_second=True,
    ),
    EntityCase(
        "username_moves_after_rename",
        "The usual order: the old owner renames, then someone else takes the name.",
        ([_user(901, username="taken")], [_user(901, username="other")], [_user(902, username="taken")]),
        (("taken", _iu(902)), ("other", _iu(901))),
    ),
    EntityCase(
        "phone_changed",
        "A phone number the user no longer has does not resolve to them.",
        ([_user(1001, phone="15551001")], [_user(1001, phone="15551999")]),
        (("+15551001", MISS), ("+1 555 1999", _iu(1001))),
    ),
    EntityCase(
        "phone_moves",
        "A phone number that moved to another user resolves to the newest owner.",
        ([_user(1101, phone="15551100")], [_user(1102, phone="15551100")]),
        (("+15551100", _iu(1102)), ("+1 (555) 110-0", _iu(1102)), (1101, _iu(1101))),
    ),
    EntityCase(
        "name_changed",
        "An old display name no longer resolves.",
        ([_user(1201, first_name="Carol")], [_user(1201, first_name="Caroline", last_name="K")]),
        (("Carol", MISS), ("Caroline K", _iu(1201))),
    ),
    EntityCase(
        "channel_renamed",
        "A channel that changed its title and dropped its username.",
        ([_channel(1301, "Old title", username="oldchan")], [_channel(1301, "New title")]),
        (("Old title", MISS), ("oldchan", MISS), ("New title", _ic(1301)), (1301, _ic(1301))),
    ),
    EntityCase(
        "duplicate_names",
        "Display names are not unique: the most recently seen owner wins in the session that saw them "
        "(after a reopen the store decides, with one-second dates, so that is not checked).",
        ([_user(1401, first_name="Dana")], [_user(1402, first_name="Dana")]),
        (("Dana", _iu(1402)), (1401, _iu(1401))),
        check_reopened=False,
    ),
    EntityCase(
        "bare_ids",
        "A bare positive id that is a user, a chat and a channel: user first, then chat, then channel "
        "(the Bot API's order); marked ids and peers are exact.",
        (_updates(users=[_user(5)], chats=[_chat(5, "Five"), _channel(5, "Channel five")]),),
        (
            (types.PeerChannel(5), _ic(5)),
            (types.PeerChat(5), types.InputPeerChat(5)),
            (5, _iu(5)),
            (-5, types.InputPeerChat(5)),
            (-1000000000005, _ic(5)),
            (types.PeerUser(5), _iu(5)),
        ),
    ),
    EntityCase(
        "bare_chat_and_channel",
        "A bare positive id that is a chat and a channel: the chat wins.",
        (_updates(chats=[_channel(6, "Channel six"), _chat(6, "Six")]),),
        ((types.PeerChannel(6), _ic(6)), (6, types.InputPeerChat(6))),
    ),
    EntityCase(
        "big_ids_and_hashes",
        "64-bit ids beyond the old 32-bit ranges, and access hashes at both ends of the signed 64-bit range.",
        (
            [
                _user(2**40 + 3, access_hash=-(2**63), username="biguser"),
                _channel(10**10 + 5, "Big channel", access_hash=2**63 - 1, username="bigchan"),
                _chat(10**10 + 7, "Big chat"),
            ],
        ),
        (
            (2**40 + 3, types.InputPeerUser(2**40 + 3, -(2**63))),
            ("biguser", types.InputPeerUser(2**40 + 3, -(2**63))),
            (10**10 + 5, types.InputPeerChannel(10**10 + 5, 2**63 - 1)),
            (-(10**12 + 10**10 + 5), types.InputPeerChannel(10**10 + 5, 2**63 - 1)),
            ("@bigchan", types.InputPeerChannel(10**10 + 5, 2**63 - 1)),
            (-(10**10 + 7), types.InputPeerChat(10**10 + 7)),
            ("Big chat", types.InputPeerChat(10**10 + 7)),
            (types.InputPeerSelf(), types.InputPeerSelf()),
            (types.InputPeerEmpty(), types.InputPeerEmpty()),
        ),
    ),
    EntityCase(
        "access_hash_changes",
        "The newest access hash of an entity is the one returned.",
        ([_user(1501, access_hash=1, username="hashy")], [_user(1501, access_hash=2, username="hashy")]),
        ((1501, types.InputPeerUser(1501, 2)), ("hashy", types.InputPeerUser(1501, 2))),
    ),
)

_CASES_BY_NAME = {c.name: c for c in ENTITY_CASES}


def describe(key: Any) -> str:
    """A stable label for a query key (used in failure messages and :class:`Deviation`)."""
    if isinstance(key, TLObject):
        return str(key)
    return repr(key)


def _fmt(value: Any) -> str:
    if value is MISS:
        return "MISS"
    if isinstance(value, TLObject):
        return str(value)
    return f"{type(value).__name__}: {value!r}"


def answer(session: Session, key: Any) -> str:
    """``get_input_entity(key)`` as a comparable string: the peer, ``MISS`` for ``ValueError``, or the error."""
    try:
        return _fmt(session.get_input_entity(key))
    except ValueError:
        return "MISS"
    except Exception as exc:  # noqa: BLE001 - any other error is an answer to compare, not a crash
        return f"raised {type(exc).__name__}"


def _align_to_second(margin: float = 0.3) -> None:
    """Sleep (at most ``margin`` seconds) so that the next ``margin`` seconds fall in one wall-clock second."""
    frac = time.time() % 1.0
    if frac > 1.0 - margin:
        time.sleep(1.0 - frac + 0.01)


def feed(session: Session, case: EntityCase) -> None:
    """Give ``case.history`` to ``session.process_entities``, one object at a time."""
    if case.same_second:
        _align_to_second()
    for tlo in case.history:
        session.process_entities(tlo)


# -- backends --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Deviation:
    """A known, documented way in which a (reference) backend is wrong for one test.

    Without ``either`` the test is a strict ``xfail`` for that backend: it must fail
    (so a fix in Telethon is noticed). With ``either`` the answers of the named
    queries (labels from :func:`describe`) may also be one of the given values,
    because the backend picks among stale rows in ``set`` iteration order.
    """

    reason: str
    either: Mapping[str, tuple[Any, ...]] | None = None


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
        """Close ``session`` (as ``TelegramClient.disconnect()`` does) and construct it again."""
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
        """:meth:`reopen`, tracked for :meth:`cleanup`."""
        again = self.reopen(session)
        if again is not session:
            self._sessions.append(again)
        return again

    def deviation(self, test: str) -> Deviation | None:
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
            either={"'shared'": (_iu(802),), "'@SHARED'": (_iu(802),), "'t.me/shared'": (_iu(802),)},
        ),
        "username_moves_after_rename": Deviation(_SET_ORDER, either={"'taken'": (_iu(901),)}),
        "phone_changed": Deviation("MemorySession never drops the row with the old phone, so it still resolves"),
        "phone_moves": Deviation(_SET_ORDER, either={"'+15551100'": (_iu(1101),), "'+1 (555) 110-0'": (_iu(1101),)}),
        "name_changed": Deviation("MemorySession never drops the row with the old display name, so it still resolves"),
        "channel_renamed": Deviation("MemorySession never drops the row with the old title and username"),
        "duplicate_names": Deviation(_SET_ORDER, either={"'Dana'": (_iu(1401),)}),
        "bare_ids": Deviation(
            "a bare id is looked up as user, chat and channel at once; the first row in set order wins",
            either={"5": (types.InputPeerChat(5), _ic(5))},
        ),
        "bare_chat_and_channel": Deviation(
            "a bare id is looked up as chat and channel at once; the first row in set order wins",
            either={"6": (_ic(6),)},
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
    """Telethon's ``SQLiteSession`` on a file in ``directory``, the persistent reference."""

    name = "telethon-sqlite"
    deviations: ClassVar[Mapping[str, Deviation]] = {
        "username_moves": Deviation(
            "rows are dated in whole seconds; among rows of one second with the same username the highest id "
            "wins (stable sort in rowid order), not the newest owner"
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


class FirestoreBackend(SessionBackend):
    """:class:`~telethon_firestore_session.FirestoreSession` on ``client`` (the emulator in tests).

    ``options`` go to every session (e.g. ``cipher=SessionCipher(key), encrypt_pii=True``).
    """

    name = "firestore"

    def __init__(self, client: Any, bot_id: str, user_id: str = "42", **options: Any) -> None:
        super().__init__()
        self.client = client
        self.bot_id = bot_id
        self.user_id = user_id
        self.options = options

    def make_session(self) -> Session:
        from telethon_firestore_session.firestore import FirestoreSession

        return FirestoreSession(self.user_id, bot_id=self.bot_id, client=self.client, **self.options)


class ScopedSQLiteBackend(SessionBackend):
    """:class:`~telethon_firestore_session.sqlite.ScopedSQLiteSession` in ``sessions_dir``.

    ``options`` go to every session (e.g. ``cipher=SessionCipher(key), encrypt_pii=True``).
    """

    name = "scoped-sqlite"

    def __init__(
        self, sessions_dir: str | os.PathLike[str], bot_id: str = "bot", user_id: str = "42", **options: Any
    ) -> None:
        super().__init__()
        self.sessions_dir = sessions_dir
        self.bot_id = bot_id
        self.user_id = user_id
        self.options = options

    def make_session(self) -> Session:
        from telethon_firestore_session.sqlite import ScopedSQLiteSession

        return ScopedSQLiteSession(self.user_id, bot_id=self.bot_id, sessions_dir=self.sessions_dir, **self.options)


# -- the suite -------------------------------------------------------------------------------


def _expect_deviation(request: pytest.FixtureRequest, backend: SessionBackend, test: str) -> Deviation | None:
    """Mark the running test as a strict xfail if ``backend`` is known to get ``test`` wrong."""
    dev = backend.deviation(test)
    if dev is not None and dev.either is None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{backend.name}: {dev.reason}"))
    return dev


def _check_answers(
    session: Session, queries: Sequence[tuple[Any, Any]], dev: Deviation | None, phase: str, backend: SessionBackend
) -> None:
    either = dev.either if dev is not None and dev.either is not None else {}
    wrong = []
    for key, expected in queries:
        label = describe(key)
        got = answer(session, key)
        allowed = {_fmt(expected), *(_fmt(v) for v in either.get(label, ()))}
        if got not in allowed:
            wrong.append(f"  get_input_entity({label}) -> {got}; expected {_fmt(expected)}")
    assert not wrong, f"{backend.name}, {phase}:\n" + "\n".join(wrong)


def _key_bytes(session: Session) -> bytes | None:
    key = session.auth_key
    return (key.key or None) if key is not None else None


_MD5_A = hashlib.md5(b"a", usedforsecurity=False).digest()
_MD5_B = hashlib.md5(b"b", usedforsecurity=False).digest()
_AUTH_KEY = bytes((i * 7 + 3) % 256 for i in range(256))


class SessionContract:
    """What every Telethon session must do. Needs a ``session_backend`` fixture (a :class:`SessionBackend`)."""

    @pytest.mark.parametrize("case", ENTITY_CASES, ids=lambda c: c.name)
    def test_get_input_entity(
        self, session_backend: SessionBackend, case: EntityCase, request: pytest.FixtureRequest
    ) -> None:
        backend = session_backend
        dev = _expect_deviation(request, backend, case.name)
        session = backend.open()
        feed(session, case)
        _check_answers(session, case.queries, dev, "same session", backend)
        if backend.persistent and case.check_reopened:
            session = backend.open_again(session)
            _check_answers(session, case.queries, dev, "reopened", backend)
            session = backend.open_again(session)
            _check_answers(session, case.queries[::-1], dev, "reopened, queries in reverse order", backend)

    def test_update_states_survive_reopen(self, session_backend: SessionBackend) -> None:
        backend = session_backend
        session = backend.open()
        common = types.updates.State(120, 7, datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), 9, unread_count=0)
        session.set_update_state(0, types.updates.State(1, 1, DATE, 1, unread_count=0))
        session.set_update_state(0, common)
        # What TelegramClient._save_states_and_entities stores for channels: pts and a naive now().
        session.set_update_state(1001, types.updates.State(50, 0, datetime.datetime.now(), 0, unread_count=0))
        session.set_update_state(1002, types.updates.State(60, 0, datetime.datetime.now(), 0, unread_count=0))
        session.set_update_state(1002, types.updates.State(61, 0, datetime.datetime.now(), 0, unread_count=0))
        session.save()
        for phase in ("same session", "reopened", "reopened twice"):
            if phase != "same session":
                session = backend.open_again(session)
            states = dict(session.get_update_states())
            assert sorted(states) == [0, 1001, 1002], phase
            got = states[0]
            assert (got.pts, got.qts, got.date, got.seq) == (120, 7, common.date, 9), phase
            assert (states[1001].pts, states[1002].pts) == (50, 61), phase
            one = session.get_update_state(0)
            assert one is not None and (one.pts, one.date) == (120, common.date), phase
            assert session.get_update_state(1002).pts == 61, phase
            assert session.get_update_state(999) is None, phase

    def test_dc_auth_key_and_takeout_survive_save_and_reopen(self, session_backend: SessionBackend) -> None:
        backend = session_backend
        session = backend.open()
        assert (session.dc_id, _key_bytes(session), session.takeout_id) == (0, None, None)
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(_AUTH_KEY)
        session.takeout_id = 987654321
        session.save()
        session = backend.open_again(session)
        assert (session.dc_id, session.server_address, session.port) == (2, "149.154.167.51", 443)
        assert _key_bytes(session) == _AUTH_KEY
        assert session.takeout_id == 987654321

        # What TelegramClient._switch_dc does, then the end of a takeout session.
        assert session.auth_key is not None
        session.auth_key.key = None
        session.set_dc(4, "149.154.167.91", 443)
        session.auth_key = None
        session.takeout_id = None
        session.save()
        session = backend.open_again(session)
        assert (session.dc_id, session.server_address, session.port) == (4, "149.154.167.91", 443)
        assert _key_bytes(session) is None
        assert session.takeout_id is None

    def test_sent_files(self, session_backend: SessionBackend, request: pytest.FixtureRequest) -> None:
        backend = session_backend
        _expect_deviation(request, backend, "sent_files")
        session = backend.open()
        session.cache_file(_MD5_A, 1000, types.InputDocument(11, 12, b"ref"))
        session.cache_file(_MD5_A, 1000, types.InputPhoto(21, 22, b"ref"))  # same bytes, other kind
        session.cache_file(_MD5_B, 2000, types.InputDocument(31, 32, b""))
        session.cache_file(_MD5_B, 2000, types.InputDocument(33, 34, b""))  # re-uploaded: the newest wins
        session.save()
        for phase in ("same session", "reopened"):
            if phase == "reopened":
                session = backend.open_again(session)
            assert session.get_file(_MD5_A, 1000, types.InputDocument) == types.InputDocument(11, 12, b""), phase
            assert session.get_file(_MD5_A, 1000, types.InputPhoto) == types.InputPhoto(21, 22, b""), phase
            assert session.get_file(_MD5_B, 2000, types.InputDocument) == types.InputDocument(33, 34, b""), phase

    def test_sent_file_misses_and_wrong_types(self, session_backend: SessionBackend) -> None:
        backend = session_backend
        session = backend.open()
        session.cache_file(_MD5_A, 1000, types.InputDocument(11, 12, b"ref"))
        with pytest.raises(TypeError):
            session.cache_file(_MD5_A, 1000, types.InputFile(1, 1, "a", ""))
        session.save()
        session = backend.open_again(session)
        assert session.get_file(_MD5_B, 1000, types.InputDocument) is None
        assert session.get_file(_MD5_A, 1001, types.InputDocument) is None
        assert session.get_file(_MD5_B, 1000, types.InputPhoto) is None
        with pytest.raises(ValueError, match="InputDocument/InputPhoto"):
            session.get_file(_MD5_A, 1000, types.InputFile)

    def test_save_entities_false_stores_nothing(
        self, session_backend: SessionBackend, request: pytest.FixtureRequest
    ) -> None:
        backend = session_backend
        _expect_deviation(request, backend, "save_entities")
        session = backend.open()
        session.process_entities([_user(3601, username="kept")])
        session.save_entities = False
        session.process_entities([_user(3602, username="dropped", phone="15553602"), _user(3601, username="moved")])
        for phase in ("same session", "reopened"):
            if phase == "reopened":
                session = backend.open_again(session)
            assert answer(session, "kept") == _fmt(_iu(3601)), phase
            assert answer(session, 3602) == "MISS", phase
            assert answer(session, "dropped") == "MISS", phase
            assert answer(session, "moved") == "MISS", phase

    def test_delete_forgets_everything(self, session_backend: SessionBackend) -> None:
        """``delete()`` (Telethon calls it on ``log_out()``) leaves nothing for the next construction."""
        backend = session_backend
        if not backend.persistent:
            pytest.skip(f"{backend.name} is not persistent; its delete() has nothing to remove")
        session = backend.open()
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(_AUTH_KEY)
        session.takeout_id = 5
        session.process_entities([_ALICE])
        session.set_update_state(0, types.updates.State(1, 2, DATE, 3, unread_count=0))
        session.cache_file(_MD5_A, 1, types.InputPhoto(1, 2, b""))
        session.save()
        session = backend.open_again(session)
        assert answer(session, "alice") == _fmt(_iu(101))
        session.delete()
        session = backend.open_again(session)
        assert (session.dc_id, _key_bytes(session), session.takeout_id) == (0, None, None)
        assert list(session.get_update_states()) == []
        assert answer(session, "alice") == "MISS"
        assert answer(session, 101) == "MISS"
        assert session.get_file(_MD5_A, 1, types.InputPhoto) is None

    def test_clone_without_arguments(self, session_backend: SessionBackend) -> None:
        """``clone()`` (used for CDN clients, which then call ``set_dc``) needs no arguments and is detached."""
        backend = session_backend
        session = backend.open()
        session.set_dc(2, "149.154.167.51", 443)
        session.auth_key = AuthKey(_AUTH_KEY)
        session.save()
        cloned = session.clone()
        try:
            assert isinstance(cloned, Session) and cloned is not session
            assert _key_bytes(cloned) is None
            cloned.set_dc(203, "91.105.192.100", 443)
            cloned.auth_key = AuthKey(bytes(256))
            cloned.save()
        finally:
            _close_fully(cloned)
        for phase in ("same session", "reopened"):
            if phase == "reopened":
                session = backend.open_again(session)
            assert (session.dc_id, session.server_address, session.port) == (2, "149.154.167.51", 443), phase
            assert _key_bytes(session) == _AUTH_KEY, phase


def _close_fully(session: Session) -> None:
    session.close()
    # SQLiteSession.close() leaves an in-memory database (what its clone() makes) open.
    conn = getattr(session, "_conn", None)
    if conn is not None and getattr(session, "filename", None) == ":memory:":
        conn.close()
        session._conn = None


# -- sessions built on SessionCore with a Store -------------------------------------------------


class StoreProbe:
    """Counts what a :class:`SessionCore`'s store is asked to do, and can hold its writes back.

    It wraps the bound store's methods on the instance; the real store still does
    every read and write.
    """

    def __init__(self, session: Session, hold_timeout: float = 5.0) -> None:
        assert isinstance(session, SessionCore), "StoreProbe needs a SessionCore bound to a store"
        store = session._store
        assert store is not None, "StoreProbe needs a SessionCore bound to a store"
        self.store: Store = store
        self.hold_timeout = hold_timeout
        self.hold_expired = False
        self.write_calls = 0
        self.entities_written = 0
        self.states_written = 0
        self.files_written = 0
        self.lookups: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()

        write_changes = store.write_changes

        def counted_write(changes: Any) -> None:
            if not self._released.wait(self.hold_timeout):
                self.hold_expired = True
            write_changes(changes)
            with self._lock:
                self.write_calls += 1
                self.entities_written += len(changes.entities)
                self.states_written += len(changes.states)
                self.files_written += len(changes.files)

        store.write_changes = counted_write  # type: ignore[method-assign]
        for name in ("find_entity_by_ids", "find_entity", "find_file"):
            self._count(name)

    def _count(self, name: str) -> None:
        original: Callable[..., Any] = getattr(self.store, name)

        def counted(*args: Any) -> Any:
            self.lookups.append((name, args))
            return original(*args)

        setattr(self.store, name, counted)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Block the store's writes until the block exits (at most ``hold_timeout``)."""
        self._released.clear()
        try:
            yield
        finally:
            self._released.set()


def _users(n: int, start: int) -> list[types.User]:
    return [_user(start + i, username=f"user{start + i}", phone=f"1555{start + i}", first_name="N") for i in range(n)]


class StoreContract:
    """Write-behind and lazy-lookup rules for sessions built on :class:`SessionCore` with a store.

    Needs a ``store_backend`` fixture: a persistent :class:`SessionBackend` whose
    sessions are ``SessionCore`` instances bound to a store.
    """

    def test_unchanged_entities_are_not_written_again(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        probe = StoreProbe(session)
        batch = [*_users(20, 3000), _chat(3100, "Chat"), _channel(3200, "Chan", username="chan3200")]
        session.process_entities(_updates(users=batch[:20], chats=batch[20:]))
        assert session.flush(10)
        assert probe.entities_written == 22

        # Seen again: equal copies, min copies and hashless copies write nothing.
        session.process_entities(_updates(users=_users(20, 3000), chats=[_chat(3100, "Chat")]))
        session.process_entities([_channel(3200, "Chan", username="chan3200")])
        session.process_entities([_user(3001, access_hash=1, min=True, username="x"), _user(3002, access_hash=None)])
        assert session.flush(10)
        assert probe.entities_written == 22

        # One change: one record. A username that moves: the new owner and the old one.
        session.process_entities([_user(3003, username="renamed3003", phone="15553003", first_name="N")])
        assert session.flush(10)
        assert probe.entities_written == 23
        session.process_entities([_user(3004, username="user3005", phone="15553004", first_name="N")])
        assert session.flush(10)
        assert probe.entities_written == 25
        session = store_backend.open_again(session)
        assert session.get_input_entity("user3005") == _iu(3004)
        assert session.get_input_entity(3005) == _iu(3005)
        with pytest.raises(ValueError, match="Could not find"):
            session.get_input_entity("user3004")

    def test_unchanged_states_and_files_are_not_written_again(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        probe = StoreProbe(session)
        for _ in range(3):
            session.set_update_state(0, types.updates.State(5, 6, DATE, 7, unread_count=0))
            # Telethon stamps channel states with now(); only pts matters.
            session.set_update_state(3300, types.updates.State(40, 0, datetime.datetime.now(), 0, unread_count=0))
            session.cache_file(_MD5_A, 10, types.InputPhoto(1, 2, b"ref"))
            session.cache_file(_MD5_A, 10, types.InputPhoto(1, 2, b"other reference, same photo"))
            assert session.flush(10)
        assert (probe.states_written, probe.files_written) == (2, 1)
        session.set_update_state(3300, types.updates.State(41, 0, datetime.datetime.now(), 0, unread_count=0))
        assert session.flush(10)
        assert probe.states_written == 3

    def test_save_with_only_entities_does_not_wait_for_the_store(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        session.auth_key = AuthKey(_AUTH_KEY)
        session.save()  # the header is durable now; from here on only entities change
        probe = StoreProbe(session)
        with probe.hold():
            session.process_entities(_users(30, 3400))
            session.set_update_state(0, types.updates.State(1, 2, DATE, 3, unread_count=0))
            start = time.perf_counter()
            session.save()
            elapsed = time.perf_counter() - start
            assert probe.write_calls == 0  # nothing has reached the store yet
        assert not probe.hold_expired, "save() waited for the store to write entities"
        assert elapsed < 1.0
        assert session.flush(10)
        assert (probe.entities_written, probe.states_written) == (30, 1)
        session = store_backend.open_again(session)
        assert session.get_input_entity("user3429") == _iu(3429)
        assert session.get_update_state(0).pts == 1

    def test_lazy_lookups_after_reopen(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        session.process_entities(
            _updates(
                users=[_ALICE, _user(3501, phone="15553501"), _user(3502, first_name="Only", last_name="Name")],
                chats=[_channel(3503, "Lazy channel", username="lazychan"), _chat(3504, "Lazy chat")],
            )
        )
        session = store_backend.open_again(session)
        probe = StoreProbe(session)
        # Nothing is loaded at start: each first lookup asks the store once; the answer is then in memory.
        for key, expected in (
            (101, _iu(101)),
            ("@alice", _iu(101)),  # known since the lookup by id: no query
            ("+15550001", _iu(101)),
            ("+1 555 3501", _iu(3501)),
            ("Only Name", _iu(3502)),
            ("t.me/LazyChan", _ic(3503)),
            (3504, types.InputPeerChat(3504)),
            (-1000000003503, _ic(3503)),
        ):
            for _ in range(2):
                assert session.get_input_entity(key) == expected, key
        kinds = [name for name, _ in probe.lookups]
        assert kinds == ["find_entity_by_ids", "find_entity", "find_entity", "find_entity", "find_entity_by_ids"]

    def test_misses_are_cached(self, store_backend: SessionBackend) -> None:
        session = store_backend.open()
        session.process_entities([_ALICE])
        session = store_backend.open_again(session)
        probe = StoreProbe(session)
        keys = ("nobody", "+1 555 9999", 4242, -4242, types.PeerChannel(4242), "Nobody Known")
        for key in keys:
            with pytest.raises(ValueError, match="Could not find"):
                session.get_input_entity(key)
        asked = len(probe.lookups)
        assert asked >= len(keys)
        for key in keys:
            with pytest.raises(ValueError, match="Could not find"):
                session.get_input_entity(key)
        assert session.get_file(_MD5_B, 1, types.InputDocument) is None
        assert session.get_file(_MD5_B, 1, types.InputDocument) is None
        assert len(probe.lookups) == asked + 1  # only the first get_file asked
        # A cached miss never hides an entity seen later.
        session.process_entities([_user(4242, username="nobody", phone="15559999")])
        assert session.get_input_entity("nobody") == _iu(4242)
        assert session.get_input_entity("+1 555 9999") == _iu(4242)
        assert session.get_input_entity(4242) == _iu(4242)
        session.cache_file(_MD5_B, 1, types.InputDocument(8, 9, b""))
        assert session.get_file(_MD5_B, 1, types.InputDocument) == types.InputDocument(8, 9, b"")
        assert len(probe.lookups) == asked + 1
