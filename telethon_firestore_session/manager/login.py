"""The two-step login from chat: send the code, then sign in with it (and the 2FA password).

The pending login (phone, phone-code hash, expiry, whether the password is
awaited) is stored with the session through the directory, so that a restart
or another instance can finish a login that this one began.
:class:`~telethon_firestore_session.manager.UserSessionManager` holds the
user's lock around each step and gives :class:`LoginSteps` its way of opening
the user's client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from telethon import errors

from telethon_firestore_session.errors import SessionStoreError

from .directory import PendingLogin
from .records import LoginResult, LoginStatus

if TYPE_CHECKING:
    from .cache import ClientCache
    from .directory import SessionDirectory, UserRecord

__all__ = ["LoginSteps"]

log = logging.getLogger(__name__)


class LoginSteps:
    """Both login steps of one manager. Call each with the user's lock held.

    :param cache: the manager's clients (a login opens the user's client there).
    :param note_authorized: records ``logged_in`` after Telegram said whether the client is.
    """

    def __init__(
        self,
        directory: SessionDirectory,
        cache: ClientCache,
        note_authorized: Callable[[str, bool], Awaitable[None]],
    ) -> None:
        self._directory = directory
        self._cache = cache
        self._note_authorized = note_authorized

    async def _set_pending(self, uid: str, pending: PendingLogin | None, **fields: bool) -> None:
        await asyncio.to_thread(self._directory.update_user, uid, pending_login=pending, **fields)

    async def begin(self, uid: str, number: str, login_timeout: float) -> LoginResult:
        """Send the code to ``number`` and store the pending login, valid for ``login_timeout`` seconds."""
        entry = await self._cache.open(uid, login=True)
        if entry is None:
            raise SessionStoreError(f"{self._directory.where}/{uid} disappeared while beginning a login")
        client = entry.client
        if await client.is_user_authorized():
            entry.authorized = True
            await self._note_authorized(uid, True)
            return LoginResult(LoginStatus.ALREADY_LOGGED_IN, "already logged in")
        entry.authorized = False
        try:
            sent = await client.send_code_request(number)
        except errors.PhoneNumberInvalidError:
            return LoginResult(LoginStatus.INVALID_PHONE, "Telegram does not accept that phone number")
        except errors.PhoneNumberBannedError:
            return LoginResult(LoginStatus.FAILED, "that phone number is banned from Telegram")
        except errors.FloodWaitError as exc:
            return LoginResult(LoginStatus.FLOOD_WAIT, f"wait {exc.seconds} s", retry_after=int(exc.seconds))
        except errors.RPCError as exc:
            return LoginResult(LoginStatus.FAILED, f"Telegram refused to send a code ({type(exc).__name__})")
        now = datetime.datetime.now(datetime.timezone.utc)
        pending = PendingLogin(
            phone=number,
            phone_code_hash=sent.phone_code_hash,
            sent_at=now,
            expires_at=now + datetime.timedelta(seconds=login_timeout),
        )
        await self._set_pending(uid, pending)
        entry.login_pending = True
        log.info("sent a login code for %s/%s", self._directory.bot_id, uid)
        return LoginResult(LoginStatus.CODE_SENT, "code sent", expires_at=pending.expires_at)

    async def complete(self, uid: str, code: str, password: str | None) -> LoginResult:
        """Sign in with the code of the pending login, and with ``password`` if the account has one."""
        record: UserRecord | None = await asyncio.to_thread(self._directory.get_user, uid)
        if record is None or record.pending_login is None:
            entry = self._cache.get(uid)
            if (entry is not None and entry.authorized) or (record is not None and record.logged_in):
                return LoginResult(LoginStatus.ALREADY_LOGGED_IN, "already logged in")
            return LoginResult(LoginStatus.NO_PENDING_LOGIN, "no login is pending; call begin_login first")
        pending = record.pending_login
        if pending.expired():
            await self._set_pending(uid, None)
            return LoginResult(LoginStatus.CODE_EXPIRED, "the login expired; call begin_login again")
        opened = await self._cache.open(uid, login=True, record=record)
        if opened is None:
            return LoginResult(LoginStatus.NO_PENDING_LOGIN, "the session disappeared; call begin_login again")
        client = opened.client
        try:
            if not pending.password_needed:
                try:
                    me = await client.sign_in(pending.phone, code, phone_code_hash=pending.phone_code_hash)
                except errors.SessionPasswordNeededError:
                    pending = dataclasses.replace(pending, password_needed=True)
                    await self._set_pending(uid, pending)
                    if password is None:
                        return LoginResult(LoginStatus.PASSWORD_NEEDED, "the account has a 2FA password")
                    me = await client.sign_in(password=password)
            elif password is None:
                return LoginResult(LoginStatus.PASSWORD_NEEDED, "the account has a 2FA password")
            else:
                me = await client.sign_in(password=password)
        except errors.PhoneCodeInvalidError:
            return LoginResult(LoginStatus.INVALID_CODE, "the code is wrong; try again")
        except (errors.PhoneCodeExpiredError, errors.PhoneCodeEmptyError):
            await self._set_pending(uid, None)
            return LoginResult(LoginStatus.CODE_EXPIRED, "the code expired; call begin_login again")
        except errors.PasswordHashInvalidError:
            return LoginResult(LoginStatus.INVALID_PASSWORD, "the 2FA password is wrong; try again")
        except errors.PhoneNumberUnoccupiedError:
            await self._set_pending(uid, None)
            return LoginResult(LoginStatus.SIGN_UP_REQUIRED, "no Telegram account uses that phone number")
        except errors.FloodWaitError as exc:
            return LoginResult(LoginStatus.FLOOD_WAIT, f"wait {exc.seconds} s", retry_after=int(exc.seconds))
        except errors.RPCError as exc:
            return LoginResult(LoginStatus.FAILED, f"Telegram refused the login ({type(exc).__name__})")
        await self._set_pending(uid, None, logged_in=True)
        opened.authorized = True
        opened.login_pending = False
        log.info("user %s/%s logged in", self._directory.bot_id, uid)
        return LoginResult(LoginStatus.LOGGED_IN, "logged in", telegram_user_id=getattr(me, "id", None))
