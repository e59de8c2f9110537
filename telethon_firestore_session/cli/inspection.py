"""Inspection commands: ``info``, ``list``, ``stats`` and ``show`` (read only)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .common import (
    BACKEND_CHOICES,
    EXIT_OK,
    EXIT_PARTIAL,
    FROM_HELP,
    AddCommand,
    Env,
    Output,
    backend_name,
    kv,
    run_async,
    table,
)


def add_commands(add: AddCommand) -> None:
    add("info", cmd_info, "deployment info, backend and health")
    add("list", cmd_list, "list the stored sessions of the bot")
    add("stats", cmd_stats, "session statistics")
    p = add("show", cmd_show, "one session's metadata (the auth key only as a fingerprint)")
    p.add_argument("user", metavar="USER")
    p.add_argument("--from", dest="from_backend", choices=BACKEND_CHOICES, help=FROM_HELP)


def cmd_info(env: Env, out: Output) -> int:
    from telethon_firestore_session.config import get_deployment_info

    info = get_deployment_info(env.config)
    health = run_async(lambda m: m.health_check(), env)
    data = {"deployment": info, "health": health}
    out.emit(data, lambda: kv(data))
    return EXIT_OK if health.get("status") == "healthy" else EXIT_PARTIAL


def cmd_list(env: Env, out: Output) -> int:
    sessions = run_async(lambda m: m.list_user_sessions(), env)
    rows = [dataclasses.asdict(s) for s in sessions]
    columns = [
        "user_id",
        "logged_in",
        "login_pending",
        "last_active_at",
        "registered_at",
        "custom_api",
        "in_use_by",
    ]
    data = {"backend": env.backend, "bot_id": env.bot_id, "sessions": [s.as_dict() for s in sessions]}
    out.emit(data, lambda: table(rows, columns))
    return EXIT_OK


def cmd_stats(env: Env, out: Output) -> int:
    stats = run_async(lambda m: m.get_session_stats(), env)
    out.emit(stats, lambda: kv(stats))
    return EXIT_OK


#: What ``show`` adds from the manager's record of the user (``None`` without one).
_INFO_FIELDS = ("logged_in", "login_pending", "registered_at", "last_active_at", "custom_api", "in_use_by")


def _describe_session(env: Env, user_id: str, backend: str) -> dict[str, Any]:
    snap = env.read(user_id, backend)
    info = run_async(lambda m: m.for_user(user_id).info(), env, backend)
    common = snap.update_states.get(0)
    return {
        "user_id": user_id,
        "bot_id": env.bot_id,
        "backend": backend,
        "has_auth_key": snap.auth_key is not None,
        "auth_key_fingerprint": snap.fingerprint,
        "dc_id": snap.dc_id,
        "server_address": snap.server_address,
        "port": snap.port,
        "takeout_id": snap.takeout_id,
        "entities": len(snap.entities),
        "sent_files": len(snap.files),
        "update_states": len(snap.update_states),
        "pts": common.pts if common is not None else None,
        "updates_date": common.date if common is not None else None,
        **{f: getattr(info, f, None) for f in _INFO_FIELDS},
    }


def cmd_show(env: Env, out: Output) -> int:
    backend = backend_name(env.args.from_backend) or env.backend
    data = _describe_session(env, env.args.user, backend)
    out.emit(data, lambda: kv(data))
    return EXIT_OK
