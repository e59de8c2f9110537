"""A first run on the local default: a real TelegramClient whose session is a per-user file.

Nothing here connects to Telegram or to a cloud: the client is built, it caches
what a connected client would cache after a request (a user), it saves and
disconnects, and a second session object for the same user finds it all again.

Run it with ``python examples/quickstart.py`` (it writes ``./sessions/quickstart/``).
"""

from __future__ import annotations

import asyncio
import os

from telethon import TelegramClient
from telethon.tl import types

from telethon_firestore_session import create_session, get_deployment_info

os.environ.setdefault("BOT_ID", "quickstart")  # the bot whose users these are


async def main() -> None:
    info = get_deployment_info()  # local here; Firestore on Render
    print(f"backend: {info['backend']}, because: {info['backend_reason']}; sessions in {info.get('sessions_dir')}")

    # One session per user of the bot: user 42's file is sessions/quickstart/user_42.session.
    client = TelegramClient(create_session(42), api_id=int(os.environ.get("API_ID", "1")), api_hash="0" * 32)
    # What Telethon does with every result it receives: cache the entities in it.
    durov = types.User(id=1006, access_hash=-4917286338155112893, username="durov", first_name="Pavel")
    client.session.process_entities(types.contacts.ResolvedPeer(types.PeerUser(1006), [], [durov]))
    await client.disconnect()  # saves and closes the session (it was never connected)

    again = create_session(42)  # a restart: a new session object for the same user
    print("@durov ->", again.get_input_entity("@durov"))
    again.close()


if __name__ == "__main__":
    asyncio.run(main())
