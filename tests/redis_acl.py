"""The Redis ACL recipe of docs/measurements.md, read from its ``redis-acl`` code block so no test retypes it."""

from __future__ import annotations

import re
import shlex

from conftest import ROOT


def documented_acl_line() -> str:
    """The one line of the docs' ``redis-acl`` block, verbatim (an ``ACL SETUSER`` for redis-cli)."""
    page = (ROOT / "docs" / "measurements.md").read_text()
    blocks = re.findall(r"^```redis-acl\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "docs/measurements.md has exactly one redis-acl block"
    (line,) = blocks[0].strip().splitlines()
    return str(line)


def documented_acl_rules() -> tuple[str, str, list[str]]:
    """The recipe's user name, password and the rules after them (``~*``, ``-@all``, ``+llen``, ...)."""
    words = shlex.split(documented_acl_line())
    assert words[:2] == ["ACL", "SETUSER"]
    password = next(w[1:] for w in words if w.startswith(">"))
    return words[2], password, [w for w in words[3:] if not w.startswith(">") and w != "on"]
