"""Telethon's TL objects as the rows a session keeps: what ``process_entities`` and the lookups compute.

An entity row is ``(marked id, access hash, username, phone, display name)``, exactly
what Telethon's ``MemorySession._entity_to_row`` computes (usernames lower-cased), with
fast paths for ``Chat`` and ``Channel``. ``User``, by far the most common, is converted
inline by :meth:`~telethon_firestore_session.entities.EntityCache.absorb` (the hot path).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from telethon import utils
from telethon.tl import types
from telethon.tl.tlobject import TLObject

__all__ = [
    "FILE_DOCUMENT",
    "FILE_PHOTO",
    "INPUT_SUBCLASSES",
    "Row",
    "candidate_ids",
    "collect",
    "file_type",
    "generic_row",
    "input_peer",
    "row_function",
    "same_state",
]

#: ``(marked id, access hash, username, phone, display name)``.
Row = tuple[int, int, "str | None", "str | None", "str | None"]

#: The ``type`` numbers of Telethon's SQLite ``sent_files`` table.
FILE_DOCUMENT = 0
FILE_PHOTO = 1

_CHANNEL_MARK = 1_000_000_000_000
#: ``SUBCLASS_OF_ID`` of InputPeer, InputUser and InputChannel: returned by lookups as they are.
INPUT_SUBCLASSES = (0xC91C90B6, 0xE669BF46, 0x40F202FD)


def _chat_row(e: types.Chat) -> Row | None:
    if not 0 < e.id <= 9999999999:
        return generic_row(e)
    return (-e.id, 0, None, None, e.title or None)


def _channel_row(e: types.Channel) -> Row | None:
    h = e.access_hash
    if h is None or e.min:
        return None
    if not 0 < e.id <= 9999999999:
        return generic_row(e)
    un = e.username
    return (-(_CHANNEL_MARK + e.id), h, un.lower() if un else None, None, e.title or None)


def generic_row(e: Any) -> Row | None:
    """Exactly what ``MemorySession._entity_to_row`` computes, for the rarer types."""
    if not isinstance(e, TLObject):
        return None
    try:
        p = utils.get_input_peer(e, allow_self=False)
        marked_id = utils.get_peer_id(p)
    except TypeError:
        return None
    if isinstance(p, (types.InputPeerUser, types.InputPeerChannel)):
        p_hash = p.access_hash
    elif isinstance(p, types.InputPeerChat):
        p_hash = 0
    else:
        return None
    username = getattr(e, "username", None) or None
    if username is not None:
        username = username.lower()
    phone = getattr(e, "phone", None)
    name = utils.get_display_name(e) or None
    return (marked_id, p_hash, username, phone, name)


#: ``row_function.get(type(e), generic_row)(e)`` is the row of ``e`` (or ``None``: not stored), for
#: every type but ``User`` (see :meth:`~telethon_firestore_session.entities.EntityCache.absorb`).
row_function: dict[type, Any] = {
    types.Chat: _chat_row,
    types.Channel: _channel_row,
}


def collect(tlo: Any) -> Iterable[Any]:
    """What Telethon's sessions take from ``tlo``: a list as it is, else ``user``, ``chat``, ``chats``, ``users``."""
    if not isinstance(tlo, TLObject) and utils.is_list_like(tlo):
        return tlo  # type: ignore[no-any-return]
    entities: list[Any] = []
    user = getattr(tlo, "user", None)
    if user is not None:
        entities.append(user)
    chat = getattr(tlo, "chat", None)
    if chat is not None:
        entities.append(chat)
    chats = getattr(tlo, "chats", None)
    if chats is not None and utils.is_list_like(chats):
        entities.extend(chats)
    users = getattr(tlo, "users", None)
    if users is not None and utils.is_list_like(users):
        entities.extend(users)
    return entities


def input_peer(marked_id: int, access_hash: int) -> Any:
    if marked_id >= 0:
        return types.InputPeerUser(marked_id, access_hash)
    bare = -marked_id
    if bare > _CHANNEL_MARK:
        return types.InputPeerChannel(bare - _CHANNEL_MARK, access_hash)
    return types.InputPeerChat(bare)


def candidate_ids(bare: int) -> tuple[int, ...]:
    """A bare positive id is a user first (as in the Bot API), then a chat, then a channel."""
    ids = (
        utils.get_peer_id(types.PeerUser(bare)),
        utils.get_peer_id(types.PeerChat(bare)),
        utils.get_peer_id(types.PeerChannel(bare)),
    )
    return tuple(dict.fromkeys(ids))


def same_state(a: types.updates.State, b: types.updates.State, entity_id: int) -> bool:
    if entity_id != 0:
        # Telethon stamps channel states with datetime.now() and reads back only pts.
        return bool(a.pts == b.pts)
    return bool(a.pts == b.pts and a.qts == b.qts and a.seq == b.seq and a.date == b.date)


def file_type(cls: Any) -> int:
    if cls is types.InputDocument:
        return FILE_DOCUMENT
    if cls is types.InputPhoto:
        return FILE_PHOTO
    raise ValueError("The cls must be either InputDocument/InputPhoto")
