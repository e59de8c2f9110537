"""``python -m telethon_firestore_session``: the command line (see :mod:`telethon_firestore_session.cli`)."""

from telethon_firestore_session.cli import main

raise SystemExit(main())
