"""A bot that gives each of its users their own Telegram client, logged in from chat.

Run it with the variables of the documentation's configuration page, for example::

    BOT_ID=mybot_local BOT_TOKEN=123:ABC API_ID=12345 API_HASH=0123456789abcdef0123456789abcdef \
        python examples/bot.py

Locally the users' sessions are files under ``sessions/mybot_local/``; on Render
(or with ``USE_LOCAL_STORAGE=false``) they live in Firestore, and a restart finds
every user, and the bot itself, still logged in. ``handle()`` is the whole bot; the
test suite runs it against the local default (tests/test_manager.py), and runs
``main()``'s pattern (bot session, ``start_bot``, ``run``, SIGTERM) in a child
process, with Telegram played by a test double at the client's RPC boundary.
"""

from __future__ import annotations

import logging
import os

from telethon import TelegramClient, events

from telethon_firestore_session import (
    LoginStatus,
    SessionConfig,
    UserSessionManager,
    create_bot_session,
    create_user_session_manager_from_config,
    log_deployment_info,
)

ADMINS = {int(x) for x in os.environ.get("BOT_ADMINS", "").split(",") if x.strip()}


async def handle(manager: UserSessionManager, user_id: int, text: str) -> str:
    """The bot's commands; returns the reply."""
    command, _, arg = text.strip().partition(" ")
    me = manager.for_user(user_id)  # this user's own client and login, nothing else
    if command == "/start":
        await me.register()
        return "Hi! Log your Telegram account in with /login +<phone number>."
    if command == "/login":
        result = await me.begin_login(arg)
        if result.status is LoginStatus.CODE_SENT:
            # Telegram expires a code that is sent back to it verbatim: ask for it with spaces.
            return "Telegram sent you a code. Reply /code 1 2 3 4 5 (with spaces)."
        return result.message
    if command == "/code":
        result = await me.complete_login(arg.replace(" ", ""))
        if result.status is LoginStatus.PASSWORD_NEEDED:
            return "Your account has a 2FA password: reply /password <password>."
        return "Logged in." if result.ok else result.message
    if command == "/password":
        result = await me.complete_login("", password=arg)
        return "Logged in." if result.ok else result.message
    if command in ("/me", "/dialogs"):
        client = await me.get_client()
        if client is None:
            return "You are not logged in: /login +<phone number>."
        if command == "/me":
            account = await client.get_me()
            return f"You are {account.first_name} (id {account.id})."
        names = [dialog.name async for dialog in client.iter_dialogs(limit=10)]
        return "\n".join(names) or "No dialogs."
    if command == "/logout":
        return "Logged out." if await me.log_out() else "You were not logged in."
    if user_id in ADMINS:  # admin operations exist only on the manager
        if command == "/stats":
            s = await manager.get_session_stats()
            return f"{s['total_sessions']} users, {s['logged_in_sessions']} logged in, {s['active_sessions']} open"
        if command == "/cleanup":
            removed = await manager.cleanup_inactive_sessions(days=30)
            return f"Removed {len(removed)} sessions unused for 30 days."
        if command == "/health":
            health = await manager.health_check()
            return f"{health['status']}: {health['backend_latency_ms']} ms, {health['writer']['queue_depth']} queued"
    return "Commands: /start /login /code /password /me /dialogs /logout"


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    config = SessionConfig.from_env()  # fails here, at start-up, on a bad or missing variable
    log_deployment_info(config)
    token = config.bot_token
    if token is None or config.api_id is None or config.api_hash is None:
        raise SystemExit("set BOT_TOKEN, API_ID and API_HASH to run the bot")
    manager = create_user_session_manager_from_config(config)
    # The bot's own session, next to its users' and leased like theirs: a restart keeps its login,
    # and catch_up fetches what was sent while it was down. At a deploy the old instance hands it over.
    bot = TelegramClient(create_bot_session(config), config.api_id, config.api_hash, catch_up=True)

    @bot.on(events.NewMessage(incoming=True, func=lambda e: e.is_private))
    async def on_message(event: events.NewMessage.Event) -> None:
        await event.reply(await handle(manager, event.sender_id, event.raw_text))

    async def serve() -> None:
        await manager.start_bot(bot, bot_token=token)  # logs in only if the stored session is not
        await bot.run_until_disconnected()  # until SIGTERM/SIGINT, or until a new instance takes the bot over

    # On SIGTERM (Render's stop) or SIGINT (Ctrl-C): every client flushed and disconnected, every
    # lease released, within the manager's shutdown_timeout (20 s); then the process exits with 0.
    manager.run(serve)


if __name__ == "__main__":
    main()
