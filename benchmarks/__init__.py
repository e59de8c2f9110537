"""Benchmarks of the sessions against Telethon's own ``SQLiteSession`` and ``MemorySession``.

Run ``python -m benchmarks`` (full run, a few minutes) or ``python -m benchmarks --quick``
(smoke run for CI). See ``benchmarks/README.md``.
"""
