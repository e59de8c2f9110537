"""What the manager returns: login results and per-user session info (no secrets in either)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .directory import UserRecord

__all__ = ["LoginResult", "LoginStatus", "UserSessionInfo"]


class LoginStatus(str, enum.Enum):
    """What a login step did. Only ``LOGGED_IN`` and ``ALREADY_LOGGED_IN`` mean success."""

    CODE_SENT = "code_sent"
    """``begin_login``: Telegram sent the code; call ``complete_login`` before ``expires_at``."""
    LOGGED_IN = "logged_in"
    ALREADY_LOGGED_IN = "already_logged_in"
    PASSWORD_NEEDED = "password_needed"  # noqa: S105 - a status name, not a password
    """The code was right; the account has two-step verification: call ``complete_login`` with ``password``."""
    INVALID_CODE = "invalid_code"
    """The code was wrong; the login stays pending, the user may try again."""
    CODE_EXPIRED = "code_expired"
    """The code (or the pending login) expired; start again with ``begin_login``."""
    INVALID_PASSWORD = "invalid_password"  # noqa: S105 - a status name, not a password
    """The 2FA password was wrong; the login stays pending at the password step."""
    NO_PENDING_LOGIN = "no_pending_login"
    """``complete_login`` without a pending login (none was begun, or it finished)."""
    INVALID_PHONE = "invalid_phone"
    SIGN_UP_REQUIRED = "sign_up_required"
    """The phone number has no Telegram account; sign up in an official app first."""
    FLOOD_WAIT = "flood_wait"
    """Telegram asks to wait ``retry_after`` seconds."""
    FAILED = "failed"
    """Another Telegram error; ``message`` names it."""


@dataclasses.dataclass(frozen=True)
class LoginResult:
    """The outcome of :meth:`UserSessionManager.begin_login` or :meth:`~UserSessionManager.complete_login`.

    :param status: what the step did.
    :param message: a human-readable message (never a code, password or key).
    :param expires_at: ``CODE_SENT``: until when ``complete_login`` can finish this login.
    :param retry_after: ``FLOOD_WAIT``: seconds Telegram asks to wait.
    :param telegram_user_id: ``LOGGED_IN``/``ALREADY_LOGGED_IN``: the Telegram id of the account.
    """

    status: LoginStatus
    message: str
    expires_at: datetime.datetime | None = None
    retry_after: int | None = None
    telegram_user_id: int | None = None

    @property
    def ok(self) -> bool:
        """``True`` once the user is logged in."""
        return self.status in (LoginStatus.LOGGED_IN, LoginStatus.ALREADY_LOGGED_IN)


@dataclasses.dataclass(frozen=True)
class UserSessionInfo:
    """One user's session, as :meth:`UserSessionManager.list_user_sessions` reports it (no secrets).

    :param user_id: the user.
    :param registered_at: when the user was registered.
    :param last_active_at: when the user's session was last used.
    :param logged_in: logged in, as recorded at the last login or check.
    :param login_pending: a login was begun and not finished.
    :param custom_api: the user has their own ``api_id``/``api_hash``.
    :param active: this manager has the user's client open.
    :param in_use_by: the holder of another instance's unexpired lease (Firestore), else ``None``.
    """

    user_id: str
    registered_at: datetime.datetime | None
    last_active_at: datetime.datetime | None
    logged_in: bool
    login_pending: bool
    custom_api: bool
    active: bool
    in_use_by: str | None

    @classmethod
    def from_record(cls, r: UserRecord, *, active: bool, holder_id: str, now: datetime.datetime) -> UserSessionInfo:
        """The info of a directory record, as seen by the manager ``holder_id`` at ``now``.

        :param r: the directory's record of the user.
        :param active: this manager has the user's client open.
        :param holder_id: this manager's lease holder id (its own lease is not "in use").
        :param now: the time leases are compared with.
        """
        lease = r.lease
        return cls(
            user_id=r.user_id,
            registered_at=r.registered_at,
            last_active_at=r.last_active_at,
            logged_in=r.logged_in,
            login_pending=r.login_pending,
            custom_api=r.custom_api,
            active=active,
            in_use_by=lease.holder if lease is not None and lease.active(now) and lease.holder != holder_id else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, times as ISO 8601 text (for JSON)."""
        data = dataclasses.asdict(self)
        for name in ("registered_at", "last_active_at"):
            value = data[name]
            data[name] = value.isoformat() if value is not None else None
        return data
