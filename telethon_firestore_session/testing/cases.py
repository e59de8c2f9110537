"""The histories the session contract feeds every backend, and how answers are compared.

Each :class:`EntityCase` is a history of real ``telethon.tl.types`` objects given to
``process_entities`` and the ``get_input_entity`` answers it must produce. The small
builders (:func:`user`, :func:`channel`, ...) make the objects the other contract
modules use too.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from telethon import utils
from telethon.sessions.abstract import Session
from telethon.tl import types
from telethon.tl.tlobject import TLObject

__all__ = ["ENTITY_CASES", "MISS", "Deviation", "EntityCase", "answer", "describe", "feed"]

UTC = datetime.timezone.utc
DATE = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
#: Two md5 digests of uploaded files (the sent-file cache's keys).
MD5_A = hashlib.md5(b"a", usedforsecurity=False).digest()
MD5_B = hashlib.md5(b"b", usedforsecurity=False).digest()
#: Two auth keys (Telegram's are 256 bytes).
AUTH_A = bytes((i * 7 + 3) % 256 for i in range(256))
AUTH_B = bytes((i * 13 + 5) % 256 for i in range(256))


class _Miss:
    """The expected answer when ``get_input_entity`` must raise ``ValueError``."""

    def __repr__(self) -> str:
        return "MISS"


#: Expected answer of a query that must raise ``ValueError`` (Telethon then asks Telegram).
MISS = _Miss()


# -- histories -------------------------------------------------------------------------------


def user(uid: int, **kw: Any) -> types.User:
    kw.setdefault("access_hash", uid * 1000 + 7)
    return types.User(uid, **kw)


def chat(cid: int, title: str) -> types.Chat:
    return types.Chat(cid, title, types.ChatPhotoEmpty(), participants_count=3, date=DATE, version=1)


def channel(cid: int, title: str, **kw: Any) -> types.Channel:
    kw.setdefault("access_hash", cid * 1000 + 9)
    return types.Channel(cid, title, types.ChatPhotoEmpty(), DATE, **kw)


def input_user(uid: int) -> types.InputPeerUser:
    return types.InputPeerUser(uid, uid * 1000 + 7)


def input_channel(cid: int) -> types.InputPeerChannel:
    return types.InputPeerChannel(cid, cid * 1000 + 9)


def updates(users: Sequence[Any] = (), chats: Sequence[Any] = ()) -> types.Updates:
    return types.Updates(updates=[], users=list(users), chats=list(chats), date=DATE, seq=0)


def _invite_link(chat_id: int) -> str:
    """An old-style ``t.me/joinchat/`` link, which encodes the chat id."""
    payload = struct.pack(">LLQ", 777, chat_id, 0x1234)  # creator id, chat id, random
    # Telethon has no public encoder for these links; its parser (utils.resolve_invite_link) is the reader.
    return "https://t.me/joinchat/" + str(utils._encode_telegram_base64(payload))


@dataclasses.dataclass(frozen=True)
class EntityCase:
    """A history of objects given to ``process_entities``, and what lookups must answer.

    Persistent backends answer the queries in the same session, then after a reopen, then
    after another reopen in reverse order (so a lazily loaded entity cannot change a later answer).

    :param name: the case's name (test ids, :attr:`SessionBackend.deviations`).
    :param doc: what it checks.
    :param history: the TL objects, in order.
    :param queries: ``(get_input_entity key, expected InputPeer* or MISS)`` pairs.
    :param check_reopened: also check the answers after a reopen (``False`` where the answer
        is unspecified there).
    """

    name: str
    doc: str
    history: tuple[Any, ...]
    queries: tuple[tuple[Any, Any], ...]
    check_reopened: bool = True


ALICE = user(101, username="Alice", phone="15550001", first_name="Alice", last_name="Smith")
_BOB = user(102, first_name="Bob")

ENTITY_CASES: tuple[EntityCase, ...] = (
    EntityCase(
        "users",
        "Users from an Updates object; ids, peers, usernames in every spelling, phones in every format, names.",
        (updates(users=[ALICE, _BOB]),),
        (
            (101, input_user(101)),
            (102, input_user(102)),
            (types.PeerUser(101), input_user(101)),
            (types.InputPeerUser(999, 5), types.InputPeerUser(999, 5)),  # input peers come back as they are
            (types.InputUser(101, 1), types.InputUser(101, 1)),
            (ALICE, input_user(101)),  # a full User is turned into its input peer without a lookup
            (user(101, access_hash=None, min=True), input_user(101)),  # a min User is looked up by id
            ("alice", input_user(101)),
            ("@alice", input_user(101)),
            ("@ALICE", input_user(101)),
            ("AlIcE", input_user(101)),
            ("t.me/alice", input_user(101)),
            ("https://t.me/Alice", input_user(101)),
            ("https://telegram.me/alice/", input_user(101)),
            ("+15550001", input_user(101)),
            ("15550001", input_user(101)),
            ("+1 555-0001", input_user(101)),
            ("(155) 500 01", input_user(101)),
            (15550001, MISS),  # an int is always an id, never a phone
            ("Alice Smith", input_user(101)),
            ("alice smith", MISS),  # display names are matched exactly
            ("Bob", input_user(102)),
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
            updates(
                chats=[
                    chat(201, "Group"),
                    channel(301, "News", username="NewsChan", broadcast=True),
                    channel(302, "Talk", megagroup=True),
                    types.ChatForbidden(202, "Old group"),
                    types.ChannelForbidden(303, 303 * 1000 + 9, "Banned"),
                ]
            ),
        ),
        (
            (-201, types.InputPeerChat(201)),
            (201, types.InputPeerChat(201)),
            (types.PeerChat(201), types.InputPeerChat(201)),
            (-1000000000301, input_channel(301)),
            (301, input_channel(301)),
            (types.PeerChannel(301), input_channel(301)),
            (types.PeerChannel(302), input_channel(302)),
            (types.InputPeerChannel(301, 0), types.InputPeerChannel(301, 0)),
            ("newschan", input_channel(301)),
            ("@NewsChan", input_channel(301)),
            ("https://t.me/newschan", input_channel(301)),
            ("News", input_channel(301)),
            ("Talk", input_channel(302)),
            ("Group", types.InputPeerChat(201)),
            (-202, types.InputPeerChat(202)),
            ("Old group", types.InputPeerChat(202)),
            (types.PeerChannel(303), input_channel(303)),
            ("Banned", input_channel(303)),
            (_invite_link(201), types.InputPeerChat(201)),
            (_invite_link(301), input_channel(301)),
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
                user(401, username="full", first_name="Full"),
                user(402, access_hash=None, username="nohash", phone="15550402", first_name="NoHash"),
                user(403, access_hash=1, min=True, username="minuser", phone="15550403"),
                channel(404, "Min channel", min=True, username="minchan"),
                channel(405, "No hash", access_hash=None, username="nohashchan"),
                types.UserEmpty(406),
                types.PeerUser(407),
            ],
            [user(401, access_hash=555, min=True, username="changed", first_name="Changed")],
        ),
        (
            (401, input_user(401)),
            ("full", input_user(401)),
            ("Full", input_user(401)),
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
                [user(500, is_self=True, username="myself", phone="15550500", first_name="Me")],
            ),
        ),
        (
            (0, types.InputPeerUser(0, 500)),
            (types.PeerUser(0), types.InputPeerUser(0, 500)),
            (500, input_user(500)),
            ("myself", input_user(500)),
            ("+1 555 0500", input_user(500)),
            ("Me", input_user(500)),
            (user(500, is_self=True), types.InputPeerSelf()),
        ),
    ),
    EntityCase(
        "containers",
        "Every container Telethon hands over: ResolvedPeer, messages.Chats, UpdatesCombined, ChatFull, "
        "plain lists; a bare User is not a container.",
        (
            types.contacts.ResolvedPeer(types.PeerUser(601), [], [user(601, username="resolved")]),
            types.messages.Chats([channel(602, "Listed")]),
            types.UpdatesCombined([], [user(603, first_name="Combined")], [chat(604, "Combo")], DATE, 0, 0),
            types.messages.ChatFull(
                types.ChatFull(604, "", types.ChatParticipantsForbidden(604), types.PeerNotifySettings()),
                [chat(604, "Combo renamed")],
                [user(605, first_name="Member")],
            ),
            [user(606, phone="15550606")],
            user(607, username="bareuser"),
        ),
        (
            ("resolved", input_user(601)),
            (602, input_channel(602)),
            ("Combined", input_user(603)),
            ("Combo renamed", types.InputPeerChat(604)),
            (605, input_user(605)),
            ("+15550606", input_user(606)),
            (607, MISS),
            ("bareuser", MISS),
        ),
    ),
    EntityCase(
        "username_renamed",
        "A username the user gave up no longer resolves to them.",
        ([user(701, username="OldName")], [user(701, username="NewName")]),
        (("oldname", MISS), ("@NewName", input_user(701)), (701, input_user(701))),
    ),
    EntityCase(
        "username_moves",
        "A username taken over by another user resolves to the newest owner, even when a stale copy of the "
        "old owner comes in the same batch (Telethon gives every row of one batch the same date).",
        ([user(802, username="shared")], [user(802, username="shared"), user(801, username="Shared")]),
        (
            ("shared", input_user(801)),
            ("@SHARED", input_user(801)),
            ("t.me/shared", input_user(801)),
            (802, input_user(802)),
            (801, input_user(801)),
        ),
    ),
    EntityCase(
        "username_moves_after_rename",
        "The usual order: the old owner renames, then someone else takes the name.",
        ([user(901, username="taken")], [user(901, username="other")], [user(902, username="taken")]),
        (("taken", input_user(902)), ("other", input_user(901))),
    ),
    EntityCase(
        "phone_changed",
        "A phone number the user no longer has does not resolve to them.",
        ([user(1001, phone="15551001")], [user(1001, phone="15551999")]),
        (("+15551001", MISS), ("+1 555 1999", input_user(1001))),
    ),
    EntityCase(
        "phone_moves",
        "A phone number that moved to another user resolves to the newest owner.",
        ([user(1101, phone="15551100")], [user(1102, phone="15551100")]),
        (("+15551100", input_user(1102)), ("+1 (555) 110-0", input_user(1102)), (1101, input_user(1101))),
    ),
    EntityCase(
        "name_changed",
        "An old display name no longer resolves.",
        ([user(1201, first_name="Carol")], [user(1201, first_name="Caroline", last_name="K")]),
        (("Carol", MISS), ("Caroline K", input_user(1201))),
    ),
    EntityCase(
        "channel_renamed",
        "A channel that changed its title and dropped its username.",
        ([channel(1301, "Old title", username="oldchan")], [channel(1301, "New title")]),
        (("Old title", MISS), ("oldchan", MISS), ("New title", input_channel(1301)), (1301, input_channel(1301))),
    ),
    EntityCase(
        "duplicate_names",
        "Display names are not unique: the most recently seen owner wins in the session that saw them "
        "(after a reopen the store decides, with one-second dates, so that is not checked).",
        ([user(1401, first_name="Dana")], [user(1402, first_name="Dana")]),
        (("Dana", input_user(1402)), (1401, input_user(1401))),
        check_reopened=False,
    ),
    EntityCase(
        "bare_ids",
        "A bare positive id that is a user, a chat and a channel: user first, then chat, then channel "
        "(the Bot API's order); marked ids and peers are exact.",
        (updates(users=[user(5)], chats=[chat(5, "Five"), channel(5, "Channel five")]),),
        (
            (types.PeerChannel(5), input_channel(5)),
            (types.PeerChat(5), types.InputPeerChat(5)),
            (5, input_user(5)),
            (-5, types.InputPeerChat(5)),
            (-1000000000005, input_channel(5)),
            (types.PeerUser(5), input_user(5)),
        ),
    ),
    EntityCase(
        "bare_chat_and_channel",
        "A bare positive id that is a chat and a channel: the chat wins.",
        (updates(chats=[channel(6, "Channel six"), chat(6, "Six")]),),
        ((types.PeerChannel(6), input_channel(6)), (6, types.InputPeerChat(6))),
    ),
    EntityCase(
        "big_ids_and_hashes",
        "64-bit ids beyond the old 32-bit ranges, and access hashes at both ends of the signed 64-bit range.",
        (
            [
                user(2**40 + 3, access_hash=-(2**63), username="biguser"),
                channel(10**10 + 5, "Big channel", access_hash=2**63 - 1, username="bigchan"),
                chat(10**10 + 7, "Big chat"),
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
        ([user(1501, access_hash=1, username="hashy")], [user(1501, access_hash=2, username="hashy")]),
        ((1501, types.InputPeerUser(1501, 2)), ("hashy", types.InputPeerUser(1501, 2))),
    ),
)


def describe(key: Any) -> str:
    """A stable label for a query key (used in failure messages and :class:`Deviation`).

    :param key: a ``get_input_entity`` key.
    """
    if isinstance(key, TLObject):
        return str(key)
    return repr(key)


def fmt(value: Any) -> str:
    if value is MISS:
        return "MISS"
    if isinstance(value, TLObject):
        return str(value)
    return f"{type(value).__name__}: {value!r}"


def key_bytes(session: Session) -> bytes | None:
    """The session's auth key as bytes (``None`` without one)."""
    key = session.auth_key
    return (key.key or None) if key is not None else None


def answer(session: Session, key: Any) -> str:
    """``get_input_entity(key)`` as a comparable string: the peer, ``MISS`` for ``ValueError``, or the error.

    :param session: the session asked.
    :param key: the key.
    """
    try:
        return fmt(session.get_input_entity(key))
    except ValueError:
        return "MISS"
    except Exception as exc:  # noqa: BLE001 - any other error is an answer to compare, not a crash
        return f"raised {type(exc).__name__}"


def feed(session: Session, case: EntityCase) -> None:
    """Give ``case.history`` to ``session.process_entities``, one object at a time.

    :param session: the session fed.
    :param case: the case.
    """
    for tlo in case.history:
        session.process_entities(tlo)


@dataclasses.dataclass(frozen=True)
class Deviation:
    """A known, documented way in which a (reference) backend is wrong for one test.

    :param reason: what the backend gets wrong.
    :param either: ``None``: the test is a strict ``xfail`` for that backend (it must fail, so
        a fix in Telethon is noticed). Else the answers of the named queries (labels from
        :func:`describe`) may also be one of the given values, because the backend picks
        among stale rows in ``set`` iteration order.
    """

    reason: str
    either: Mapping[str, tuple[Any, ...]] | None = None


def expect_deviation(request: pytest.FixtureRequest, backend: Any, test: str) -> Deviation | None:
    """Mark the running test as a strict xfail if ``backend`` (its ``deviations``) is known to get ``test`` wrong."""
    dev: Deviation | None = backend.deviations.get(test)
    if dev is not None and dev.either is None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{backend.name}: {dev.reason}"))
    return dev
