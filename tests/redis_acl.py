"""The README's Redis ACL recipe, read from its ``redis-acl`` code block so no test retypes it."""

from __future__ import annotations

import re
import shlex

from conftest import ROOT


def readme_acl_line() -> str:
    """The one line of the README's ``redis-acl`` block, verbatim (an ``ACL SETUSER`` for redis-cli)."""
    blocks = re.findall(r"^```redis-acl\n(.*?)^```", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the README has exactly one redis-acl block"
    (line,) = blocks[0].strip().splitlines()
    return str(line)


def readme_acl_rules() -> tuple[str, str, list[str]]:
    """The recipe's user name, password and the rules after them (``~*``, ``-@all``, ``+llen``, ...)."""
    words = shlex.split(readme_acl_line())
    assert words[:2] == ["ACL", "SETUSER"]
    password = next(w[1:] for w in words if w.startswith(">"))
    return words[2], password, [w for w in words[3:] if not w.startswith(">") and w != "on"]
