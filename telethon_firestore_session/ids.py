"""The one place where ``bot_id`` and ``user_id`` are validated."""

from __future__ import annotations

import dataclasses
import re

from .errors import InvalidSessionIdError

MAX_ID_LENGTH = 128

# Printable, no path separators, no whitespace, no shell or URL specials. Matched with
# fullmatch: ``$`` would also match before a final newline ("123\n" is not "123").
_ALLOWED = re.compile(r"[A-Za-z0-9_.@:+=~-]+")
# Firestore reserves ids of the form __name__.
_RESERVED = re.compile(r"__.*__")


def validate_id(kind: str, value: object) -> str:
    """Return ``value`` as a safe id string, or raise :class:`InvalidSessionIdError`.

    An id may be an ``int`` (Telegram user ids) or a ``str`` of at most
    128 characters from ``A-Z a-z 0-9 _ . @ : + = ~ -``. It may not be empty,
    contain ``..``, start with ``.``, or look like ``__reserved__``.

    :param kind: what the id is, for the message (``"bot_id"``, ``"user_id"``).
    :param value: the id.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidSessionIdError(f"{kind} must be a str or int, not {type(value).__name__}")
    text = str(value)
    if not text:
        raise InvalidSessionIdError(f"{kind} must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise InvalidSessionIdError(f"{kind} must be at most {MAX_ID_LENGTH} characters, got {len(text)}")
    if not _ALLOWED.fullmatch(text):
        raise InvalidSessionIdError(
            f"{kind} {text!r} may only contain letters, digits and _ . @ : + = ~ - "
            "(no path separators, spaces or control characters)"
        )
    if ".." in text or text.startswith("."):
        raise InvalidSessionIdError(f"{kind} {text!r} must not contain '..' or start with '.'")
    if _RESERVED.fullmatch(text):
        raise InvalidSessionIdError(f"{kind} {text!r} must not have the reserved form __name__")
    return text


@dataclasses.dataclass(frozen=True)
class SessionKey:
    """Which session: a bot and one of its users. Both parts are validated (:func:`validate_id`).

    :param bot_id: the bot.
    :param user_id: the user.
    :raises InvalidSessionIdError: for an invalid id.
    """

    bot_id: str
    user_id: str

    def __init__(self, bot_id: object, user_id: object) -> None:
        object.__setattr__(self, "bot_id", validate_id("bot_id", bot_id))
        object.__setattr__(self, "user_id", validate_id("user_id", user_id))

    def __str__(self) -> str:
        return f"{self.bot_id}/{self.user_id}"


class BotSessionKey(SessionKey):
    """The bot's own session, outside its users' namespace (see ``create_bot_session``).

    Firestore keeps it in ``bots/{bot_id}/bot_session/session``, SQLite in
    ``{sessions_dir}/{bot_id}/bot.session``. ``str()`` is ``{bot_id}#bot``, which no
    user's key can be (``#`` is not allowed in ids), so a value sealed for the bot
    never opens as a user's.

    :param bot_id: the bot.
    """

    def __init__(self, bot_id: object) -> None:
        super().__init__(bot_id, "bot")

    def __str__(self) -> str:
        return f"{self.bot_id}#bot"
