"""A Telegram double for tests: a real ``TelegramClient`` whose RPC carrier is swapped.

Approach (the issue allows either; this is the second): ``TelegramClient`` is
**subclassed only at the RPC boundary**. :class:`TelegramDouble` is a real
``telethon.TelegramClient``; the one thing it changes is ``self._sender``, the
``MTProtoSender`` that would carry requests to Telegram over TCP. In its place
:class:`DoubleSender` hands each request to :class:`FakeTelegram`, which answers
the way Telegram does (results as real ``telethon.tl.types`` objects, failures
as the real ``telethon.errors`` RPC errors). Everything above the sender is
Telethon's own code and runs unchanged:

* ``connect()`` sets the default DC on a fresh session and calls
  ``session.save()``, takes the sender's auth key (created on first connect, as
  the key exchange would) into ``session.auth_key`` and saves again, sends
  ``InvokeWithLayer(InitConnection(GetConfig))``, loads the update state and
  starts the update and keep-alive tasks;
* ``_call()`` resolves requests, applies flood-wait handling and calls
  ``session.process_entities()`` on every result;
* ``send_code_request``/``sign_in`` (including the SRP computation for 2FA
  passwords, which :class:`FakeTelegram` verifies as the server side of SRP),
  ``is_user_authorized``, ``get_me``, ``get_entity``, ``log_out`` (which calls
  ``session.delete()``) and ``disconnect()`` (which saves the update state and
  entities and calls ``session.close()``).

No socket is opened: nothing here reaches the network. The session and the
store under the client are never faked.

:class:`FakeTelegram` holds the server's side: accounts (phone, user id,
username, optional 2FA password), login codes bound to the auth key that asked
for them (a code is valid for ``code_ttl`` seconds; using it from another auth
key gives ``PHONE_CODE_EXPIRED``, as this double models it), and which auth key
is logged in as whom. Bots (:meth:`FakeTelegram.add_bot`) log in with their token
(``auth.ImportBotAuthorization``). The account's update state is one ``pts``
counter (``updates.GetState``); ``updates.GetDifference`` records the ``pts`` it
was asked from in ``differences``, which shows a restarted client catching up
from its stored state. ``events`` records when each sender connected and
disconnected (wall clock, comparable across processes). ``save()``/``load()``
carry that state to another process, so a test can check that a fresh process
with the stored auth key is still logged in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from telethon import TelegramClient, errors, utils
from telethon.crypto import AuthKey
from telethon.password import big_num_for_hash, compute_hash, num_bytes_for_hash, sha256, xor
from telethon.tl import functions, types

__all__ = ["Account", "DoubleSender", "FakeTelegram", "TelegramDouble"]

# Telegram's 2048-bit safe prime for SRP (the one Telethon accepts without factorising), with g = 3.
SRP_P = bytes.fromhex(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f48198a0aa7c14058229493d22530f4db"
    "fa336f6e0ac925139543aed44cce7c3720fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f64"
    "2477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4a4a695811051907e162753b56b0f6b41"
    "0dba74d8a84b2a14b3144e0ef1284754fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4"
    "e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f0d8115f635b105ee2e4e15d04b2454bf"
    "6f4fadf034b10403119cd8e3b92fcc5b"
)
SRP_G = 3

_WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
)


@dataclasses.dataclass
class Account:
    """A Telegram account on the double's server."""

    user_id: int
    phone: str
    first_name: str
    username: str | None = None
    access_hash: int = dataclasses.field(default_factory=lambda: secrets.randbits(63))
    password: str | None = None
    #: A bot: logs in with ``bot_token`` (``{user_id}:{secret}``), never with a code.
    bot_token: str | None = None
    # SRP: the verifier v = g^x mod p for the password, and the salts it was made with.
    salt1: bytes = dataclasses.field(default_factory=lambda: os.urandom(40))
    salt2: bytes = dataclasses.field(default_factory=lambda: os.urandom(16))

    def user(self, *, is_self: bool) -> types.User:
        return types.User(
            id=self.user_id,
            is_self=is_self,
            access_hash=self.access_hash,
            first_name=self.first_name,
            username=self.username,
            phone=None if self.bot_token else self.phone,
            bot=self.bot_token is not None,
            bot_info_version=1 if self.bot_token else None,
        )

    def algo(self) -> types.PasswordKdfAlgoSHA256SHA256PBKDF2HMACSHA512iter100000SHA256ModPow:
        return types.PasswordKdfAlgoSHA256SHA256PBKDF2HMACSHA512iter100000SHA256ModPow(
            salt1=self.salt1, salt2=self.salt2, g=SRP_G, p=SRP_P
        )


@dataclasses.dataclass
class _Code:
    phone: str
    code: str
    key_id: int
    expires_at: float


@dataclasses.dataclass
class _SrpSession:
    b: int
    srp_b: bytes
    verifier: int
    account: Account
    key_id: int


class FakeTelegram:
    """Telegram's side of the conversation, in memory. See the module docstring."""

    def __init__(self, *, code_ttl: float = 120.0) -> None:
        self.code_ttl = code_ttl
        self.accounts: dict[str, Account] = {}
        self.codes: dict[str, _Code] = {}
        #: auth key id -> Telegram user id logged in with it.
        self.authorizations: dict[int, int] = {}
        #: auth key id -> user id whose code was right but whose 2FA password is awaited.
        self.awaiting_password: dict[int, int] = {}
        self._srp: dict[int, _SrpSession] = {}
        self._verifiers: dict[int, int] = {}
        #: Names of every request served, in order (for assertions).
        self.requests: list[str] = []
        #: How many times a sender connected (one per ``client.connect()`` that was not a no-op).
        self.connects = 0
        #: Raise FloodWaitError(seconds) for SendCode on these phones.
        self.flood: dict[str, int] = {}
        #: The accounts' update state (one counter for all): what GetState answers.
        self.pts = 1
        #: The ``pts`` of every GetDifference request, in order.
        self.differences: list[int] = []
        #: ``(what, wall-clock time)`` for every sender ``"connect"`` and ``"disconnect"``.
        self.events: list[tuple[str, float]] = []

    # -- setting up ------------------------------------------------------------------------------

    def add_account(
        self,
        phone: str,
        *,
        user_id: int,
        first_name: str = "Test",
        username: str | None = None,
        password: str | None = None,
    ) -> Account:
        number = utils.parse_phone(phone)
        assert number, phone
        account = Account(user_id=user_id, phone=number, first_name=first_name, username=username, password=password)
        self.accounts[number] = account
        return account

    def add_bot(self, token: str, *, username: str) -> Account:
        """A bot account; ``token`` is ``{user id}:{secret}`` as @BotFather gives it."""
        user_id = int(token.split(":", 1)[0])
        account = Account(user_id=user_id, phone=f"bot{user_id}", first_name=username, username=username)
        account.bot_token = token
        self.accounts[account.phone] = account
        return account

    def last_code(self, phone: str) -> str:
        number = utils.parse_phone(phone)
        codes = [c for c in self.codes.values() if c.phone == number]
        assert codes, f"no code was sent to {phone}"
        return codes[-1].code

    def expire_codes(self) -> None:
        for code in self.codes.values():
            code.expires_at = 0.0

    def logged_in_user(self, auth_key: bytes | None) -> int | None:
        if not auth_key:
            return None
        return self.authorizations.get(AuthKey(auth_key).key_id)

    def client(self, session: Any, api_id: int, api_hash: str, **kwargs: Any) -> TelegramDouble:
        """A client factory for ``UserSessionManager(client_factory=...)``."""
        return TelegramDouble(session, api_id, api_hash, telegram=self, **kwargs)

    @property
    def client_class(self) -> type[TelegramDouble]:
        """``TelegramDouble`` bound to this server, for code that wants a class."""
        return type("BoundTelegramDouble", (TelegramDouble,), {"telegram": self})

    # -- carrying the state to another process ------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        data = {
            "code_ttl": self.code_ttl,
            "accounts": [
                {
                    "user_id": a.user_id,
                    "phone": a.phone,
                    "first_name": a.first_name,
                    "username": a.username,
                    "access_hash": a.access_hash,
                    "password": a.password,
                    "salt1": a.salt1.hex(),
                    "salt2": a.salt2.hex(),
                    "bot_token": a.bot_token,
                }
                for a in self.accounts.values()
            ],
            "codes": {h: dataclasses.asdict(c) for h, c in self.codes.items()},
            "authorizations": {str(k): v for k, v in self.authorizations.items()},
            "pts": self.pts,
        }
        Path(path).write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FakeTelegram:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        fake = cls(code_ttl=data["code_ttl"])
        for a in data["accounts"]:
            account = Account(
                user_id=a["user_id"],
                phone=a["phone"],
                first_name=a["first_name"],
                username=a["username"],
                access_hash=a["access_hash"],
                password=a["password"],
                salt1=bytes.fromhex(a["salt1"]),
                salt2=bytes.fromhex(a["salt2"]),
                bot_token=a.get("bot_token"),
            )
            fake.accounts[account.phone] = account
        fake.codes = {h: _Code(**c) for h, c in data["codes"].items()}
        fake.authorizations = {int(k): v for k, v in data["authorizations"].items()}
        fake.pts = data.get("pts", 1)
        return fake

    # -- answering ---------------------------------------------------------------------------------

    def _account_by_id(self, user_id: int) -> Account | None:
        for account in self.accounts.values():
            if account.user_id == user_id:
                return account
        return None

    def _me(self, key_id: int | None, request: Any) -> Account:
        user_id = self.authorizations.get(key_id) if key_id is not None else None
        account = self._account_by_id(user_id) if user_id is not None else None
        if account is None:
            raise errors.AuthKeyUnregisteredError(request=request)
        return account

    def _verifier(self, account: Account) -> int:
        v = self._verifiers.get(account.user_id)
        if v is None:
            assert account.password is not None
            x = int.from_bytes(compute_hash(account.algo(), account.password), "big")
            v = self._verifiers[account.user_id] = pow(SRP_G, x, int.from_bytes(SRP_P, "big"))
        return v

    def _authorize(self, key_id: int, account: Account) -> types.auth.Authorization:
        self.authorizations[key_id] = account.user_id
        self.awaiting_password.pop(key_id, None)
        return types.auth.Authorization(user=account.user(is_self=True))

    def handle(self, auth_key: AuthKey, request: Any) -> Any:
        """Answer one request as Telegram would, or raise the RPC error Telegram would send."""
        while isinstance(request, _WRAPPERS):
            request = request.query
        self.requests.append(type(request).__name__)
        key_id = auth_key.key_id
        now = datetime.datetime.now(datetime.timezone.utc)

        if isinstance(request, functions.help.GetConfigRequest):
            return _config(now)
        if isinstance(request, functions.users.GetUsersRequest):
            result = []
            for wanted in request.id:
                if isinstance(wanted, types.InputUserSelf):
                    result.append(self._me(key_id, request).user(is_self=True))
                else:
                    self._me(key_id, request)
                    account = self._account_by_id(getattr(wanted, "user_id", 0))
                    result.append(account.user(is_self=False) if account else types.UserEmpty(wanted.user_id))
            return result
        if isinstance(request, functions.updates.GetStateRequest):
            self._me(key_id, request)
            return types.updates.State(pts=self.pts, qts=0, date=now, seq=1, unread_count=0)
        if isinstance(request, functions.updates.GetDifferenceRequest):
            self._me(key_id, request)
            self.differences.append(request.pts)
            return types.updates.DifferenceEmpty(date=now, seq=1)
        if isinstance(request, functions.auth.ImportBotAuthorizationRequest):
            bot = next((a for a in self.accounts.values() if a.bot_token == request.bot_auth_token), None)
            if bot is None:
                raise errors.AccessTokenInvalidError(request=request)
            return self._authorize(key_id, bot)
        if isinstance(request, functions.auth.SendCodeRequest):
            return self._send_code(key_id, request.phone_number, request)
        if isinstance(request, functions.auth.ResendCodeRequest):
            old = self.codes.pop(request.phone_code_hash, None)
            if old is None or old.phone != request.phone_number:
                raise errors.PhoneCodeExpiredError(request=request)
            return self._send_code(key_id, request.phone_number, request)
        if isinstance(request, functions.auth.SignInRequest):
            return self._sign_in(key_id, request)
        if isinstance(request, functions.account.GetPasswordRequest):
            return self._password(key_id)
        if isinstance(request, functions.auth.CheckPasswordRequest):
            return self._check_password(key_id, request)
        if isinstance(request, functions.auth.LogOutRequest):
            self._me(key_id, request)
            self.authorizations.pop(key_id, None)
            return types.auth.LoggedOut()
        if isinstance(request, functions.contacts.ResolveUsernameRequest):
            self._me(key_id, request)
            for account in self.accounts.values():
                if account.username and account.username.lower() == request.username.lower():
                    return types.contacts.ResolvedPeer(
                        peer=types.PeerUser(account.user_id), chats=[], users=[account.user(is_self=False)]
                    )
            raise errors.UsernameNotOccupiedError(request=request)
        if isinstance(request, functions.messages.GetDialogsRequest):
            self._me(key_id, request)
            return types.messages.Dialogs(dialogs=[], messages=[], chats=[], users=[])
        raise errors.BadRequestError(request, f"{type(request).__name__.upper()}_NOT_IN_DOUBLE", 400)

    def _send_code(self, key_id: int, phone: str, request: Any) -> types.auth.SentCode:
        number = utils.parse_phone(phone)
        if not number or len(number) < 7:
            raise errors.PhoneNumberInvalidError(request=request)
        if number in self.flood:
            raise errors.FloodWaitError(request=request, capture=self.flood[number])
        code = f"{secrets.randbelow(100000):05d}"
        phone_code_hash = secrets.token_hex(9)
        self.codes[phone_code_hash] = _Code(number, code, key_id, time.time() + self.code_ttl)
        return types.auth.SentCode(
            type=types.auth.SentCodeTypeApp(length=5), phone_code_hash=phone_code_hash, next_type=None, timeout=None
        )

    def _sign_in(self, key_id: int, request: functions.auth.SignInRequest) -> Any:
        code = self.codes.get(request.phone_code_hash)
        if code is None or code.phone != request.phone_number or code.key_id != key_id:
            raise errors.PhoneCodeExpiredError(request=request)
        if time.time() >= code.expires_at:
            del self.codes[request.phone_code_hash]
            raise errors.PhoneCodeExpiredError(request=request)
        if not request.phone_code:
            raise errors.PhoneCodeEmptyError(request=request)
        if request.phone_code != code.code:
            raise errors.PhoneCodeInvalidError(request=request)
        del self.codes[request.phone_code_hash]
        account = self.accounts.get(code.phone)
        if account is None:
            return types.auth.AuthorizationSignUpRequired()
        if account.password is not None:
            self.awaiting_password[key_id] = account.user_id
            raise errors.SessionPasswordNeededError(request=request)
        return self._authorize(key_id, account)

    def _password(self, key_id: int) -> types.account.Password:
        user_id = self.awaiting_password.get(key_id) or self.authorizations.get(key_id)
        account = self._account_by_id(user_id) if user_id is not None else None
        algo = types.PasswordKdfAlgoUnknown()
        if account is None or account.password is None:
            return types.account.Password(
                new_algo=algo, new_secure_algo=types.SecurePasswordKdfAlgoUnknown(), secure_random=os.urandom(32)
            )
        p = int.from_bytes(SRP_P, "big")
        v = self._verifier(account)
        k = int.from_bytes(sha256(num_bytes_for_hash(SRP_P), big_num_for_hash(SRP_G)), "big")
        b = int.from_bytes(os.urandom(256), "big")
        srp_b = ((k * v + pow(SRP_G, b, p)) % p).to_bytes(256, "big")
        srp_id = secrets.randbits(63)
        self._srp[srp_id] = _SrpSession(b, srp_b, v, account, key_id)
        return types.account.Password(
            new_algo=account.algo(),
            new_secure_algo=types.SecurePasswordKdfAlgoUnknown(),
            secure_random=os.urandom(32),
            has_password=True,
            current_algo=account.algo(),
            srp_B=srp_b,
            srp_id=srp_id,
            hint="the double's hint",
        )

    def _check_password(self, key_id: int, request: functions.auth.CheckPasswordRequest) -> Any:
        check = request.password
        srp = self._srp.pop(getattr(check, "srp_id", -1), None)
        if srp is None or srp.key_id != key_id or self.awaiting_password.get(key_id) != srp.account.user_id:
            raise errors.SrpIdInvalidError(request=request)
        p = int.from_bytes(SRP_P, "big")
        a_for_hash = bytes(check.A)
        b_for_hash = num_bytes_for_hash(srp.srp_b)
        u = int.from_bytes(sha256(a_for_hash, b_for_hash), "big")
        s = pow(int.from_bytes(a_for_hash, "big") * pow(srp.verifier, u, p) % p, srp.b, p)
        k_session = sha256(big_num_for_hash(s))
        algo = srp.account.algo()
        m1 = sha256(
            xor(sha256(num_bytes_for_hash(SRP_P)), sha256(big_num_for_hash(SRP_G))),
            sha256(algo.salt1),
            sha256(algo.salt2),
            a_for_hash,
            b_for_hash,
            k_session,
        )
        if not secrets.compare_digest(m1, bytes(check.M1)):
            raise errors.PasswordHashInvalidError(request=request)
        return self._authorize(key_id, srp.account)


def _config(now: datetime.datetime) -> types.Config:
    return types.Config(
        date=now,
        expires=now + datetime.timedelta(hours=1),
        test_mode=False,
        this_dc=2,
        dc_options=[types.DcOption(id=2, ip_address="127.0.0.1", port=443)],
        dc_txt_domain_name="double.invalid",
        chat_size_max=200,
        megagroup_size_max=200000,
        forwarded_count_max=100,
        online_update_period_ms=210000,
        offline_blur_timeout_ms=5000,
        offline_idle_timeout_ms=30000,
        online_cloud_timeout_ms=300000,
        notify_cloud_delay_ms=30000,
        notify_default_delay_ms=1500,
        push_chat_period_ms=60000,
        push_chat_limit=2,
        edit_time_limit=172800,
        revoke_time_limit=2147483647,
        revoke_pm_time_limit=2147483647,
        rating_e_decay=2419200,
        stickers_recent_limit=200,
        channels_read_media_period=604800,
        call_receive_timeout_ms=20000,
        call_ring_timeout_ms=90000,
        call_connect_timeout_ms=30000,
        call_packet_timeout_ms=10000,
        me_url_prefix="https://t.me/",
        caption_length_max=1024,
        message_length_max=4096,
        webfile_dc_id=4,
    )


class DoubleSender:
    """Stands in for ``MTProtoSender``: same interface, answers from :class:`FakeTelegram`, no socket."""

    def __init__(self, auth_key: AuthKey | None, telegram: FakeTelegram) -> None:
        self.auth_key = auth_key or AuthKey(None)
        self._telegram = telegram
        self._user_connected = False
        self._disconnected: asyncio.Future[None] | None = None
        self._connection: Any = None

    async def connect(self, connection: Any) -> bool:
        if self._user_connected:
            return False
        self._connection = connection  # built by Telethon, never opened
        if not self.auth_key:
            # What the MTProto key exchange produces: a fresh 2048-bit key in this same object.
            self.auth_key.key = os.urandom(256)
        self._user_connected = True
        self._disconnected = asyncio.get_running_loop().create_future()
        self._telegram.connects += 1
        self._telegram.events.append(("connect", time.time()))
        return True

    def is_connected(self) -> bool:
        return self._user_connected

    def _transport_connected(self) -> bool:
        return self._user_connected

    async def disconnect(self) -> None:
        if self._user_connected:
            self._telegram.events.append(("disconnect", time.time()))
        self._user_connected = False
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    @property
    def disconnected(self) -> asyncio.Future[None]:
        if self._disconnected is None:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_result(None)
            return fut
        return asyncio.shield(self._disconnected)

    def _keepalive_ping(self, rnd_id: int) -> None:
        """Pings are answered by the transport; there is none."""

    def send(self, request: Any, ordered: bool = False) -> Any:
        if not self._user_connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if utils.is_list_like(request):
            return [self._answer(r) for r in request]
        return self._answer(request)

    def _answer(self, request: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self._telegram.handle(self.auth_key, request))
        except errors.RPCError as exc:
            fut.set_exception(exc)
        return fut


class TelegramDouble(TelegramClient):  # type: ignore[misc]
    """A real ``TelegramClient`` whose sender is a :class:`DoubleSender` (see the module docstring)."""

    telegram: FakeTelegram | None = None

    def __init__(
        self, session: Any, api_id: int, api_hash: str, *, telegram: FakeTelegram | None = None, **kwargs: Any
    ) -> None:
        server = telegram or type(self).telegram
        if server is None:
            raise TypeError("TelegramDouble needs telegram= (or a class from FakeTelegram.client_class)")
        kwargs.setdefault("receive_updates", False)
        super().__init__(session, api_id, api_hash, **kwargs)
        self.telegram = server
        self._sender = DoubleSender(self.session.auth_key, server)
