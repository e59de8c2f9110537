"""A Griffe extension for the API reference: Sphinx roles in docstrings become inline code.

The package's docstrings are in Sphinx style (``:param x:``, ``:raises E:``, which mkdocstrings
parses), with inline roles such as ``:class:`SessionCore``` or ``:meth:`~Store.load```. Markdown
has no roles, so without this they would show as ``:class:`` before the name. A ``~`` keeps only
the last part of the name, as Sphinx shows it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    name = match.group(2)
    if match.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"`{name}`"


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)
