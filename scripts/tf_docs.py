#!/usr/bin/env python3
"""Write the READMEs' inputs/outputs tables from the modules' .tf files, or check they are current.

The tables sit between ``<!-- BEGIN_TF_DOCS -->`` and ``<!-- END_TF_DOCS -->`` in README.md (the root
module) and in each submodule's README.md (modules/NAME). Types and
defaults are shown as written in the source (the reader sees ``optional(number, 2)``, not a value
re-printed by a parser), so a small HCL scanner that finds each attribute's source text is enough:
strings, ``${}`` interpolation, heredocs, comments and nested brackets are skipped correctly, and
nothing is evaluated. Stdlib only.

Usage: ``python scripts/tf_docs.py`` (rewrite the READMEs) or ``--check`` (exit 1 when one is stale).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each module directory and the README holding its tables.
MODULES = {ROOT: ROOT / "README.md", ROOT / "modules" / "scaler": ROOT / "modules" / "scaler" / "README.md"}
BEGIN, END = "<!-- BEGIN_TF_DOCS -->", "<!-- END_TF_DOCS -->"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HEREDOC = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_]*)[ \t]*\n")


@dataclass(frozen=True)
class Attribute:
    name: str
    source: str  # the expression exactly as written


@dataclass(frozen=True)
class Block:
    kind: str
    labels: tuple[str, ...]
    attributes: dict[str, Attribute]


class HclError(ValueError):
    """The file is not HCL this scanner understands; names the file and offset."""


def _skip_string(text: str, i: int) -> int:
    """``i`` is at an opening quote: return the index after the closing one (``${...}`` may nest)."""
    i += 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            return i + 1
        if text.startswith(("${", "%{"), i):
            i = _skip_brackets(text, i + 1)
            continue
        i += 1
    raise HclError(f"unterminated string at {i}")


def _skip_heredoc(text: str, i: int, match: re.Match[str]) -> int:
    """``i`` is at ``<<``: return the index after the line holding the closing marker."""
    marker = match.group(2)
    closing = re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]*$", re.MULTILINE)
    end = closing.search(text, match.end())
    if end is None:
        raise HclError(f"unterminated heredoc {marker} at {i}")
    return end.end()


def _skip_comment(text: str, i: int) -> int:
    """``i`` is at ``#``, ``//`` or ``/*``: return the index after the comment (before its newline)."""
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise HclError(f"unterminated comment at {i}")
        return end + 2
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _is_comment(text: str, i: int) -> bool:
    return text[i] == "#" or text.startswith(("//", "/*"), i)


def _skip_brackets(text: str, i: int) -> int:
    """``i`` is at an opening bracket: return the index after its match."""
    depth = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            i = _skip_string(text, i)
            continue
        if _is_comment(text, i):
            i = _skip_comment(text, i)
            continue
        heredoc = _HEREDOC.match(text, i) if char == "<" else None
        if heredoc:
            i = _skip_heredoc(text, i, heredoc)
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise HclError(f"unbalanced bracket at {i}")


def _expression_end(text: str, i: int, stop: int) -> int:
    """From ``i`` (just after ``=``), the end of the expression: a newline or comment outside brackets."""
    while i < stop:
        char = text[i]
        if char == "\n" or _is_comment(text, i):
            return i
        if char == '"':
            i = _skip_string(text, i)
        elif char in "([{":
            i = _skip_brackets(text, i)
        elif char == "<" and (heredoc := _HEREDOC.match(text, i)):
            i = _skip_heredoc(text, i, heredoc)
        else:
            i += 1
    return stop


def parse_body(text: str, start: int = 0, stop: int | None = None) -> tuple[dict[str, Attribute], list[Block]]:
    """The attributes and blocks directly inside ``text[start:stop]`` (nested blocks one level deep)."""
    stop = len(text) if stop is None else stop
    attributes: dict[str, Attribute] = {}
    blocks: list[Block] = []
    i = start
    while i < stop:
        if text[i].isspace():
            i += 1
            continue
        if _is_comment(text, i):
            i = _skip_comment(text, i)
            continue
        ident = _IDENT.match(text, i)
        if not ident:
            raise HclError(f"unexpected {text[i]!r} at {i}")
        name, i = ident.group(), ident.end()
        while text[i] in " \t":
            i += 1
        if text[i] == "=" and text[i + 1] != "=":
            end = _expression_end(text, i + 1, stop)
            attributes[name] = Attribute(name, text[i + 1 : end].strip())
            i = end
            continue
        labels: list[str] = []
        while text[i] != "{":
            if text[i] == '"':
                end = _skip_string(text, i)
                labels.append(json.loads(text[i:end]))
                i = end
            elif text[i].isspace():
                i += 1
            else:
                label = _IDENT.match(text, i)
                if not label:
                    raise HclError(f"unexpected {text[i]!r} in the header of block {name} at {i}")
                labels.append(label.group())
                i = label.end()
        end = _skip_brackets(text, i)
        inner, _ = parse_body(text, i + 1, end - 1)
        blocks.append(Block(name, tuple(labels), inner))
        i = end
    return attributes, blocks


def string_value(source: str) -> str:
    """The text of a string literal or heredoc (no interpolation is evaluated)."""
    heredoc = _HEREDOC.match(source + "\n")
    if heredoc:
        body = source[heredoc.end() :]
        body = body[: body.rfind("\n") + 1]  # drop the closing marker's line, keep the last newline
        return textwrap.dedent(body) if heredoc.group(1) else body
    if source.startswith('"') and source.endswith('"'):
        # HCL escapes a literal ${ or %{ by doubling the sigil; JSON does not know that escape.
        return str(json.loads(source)).replace("$${", "${").replace("%%{", "%{")
    return source


def _cell_text(text: str) -> str:
    """Markdown for a table cell: code spans kept, HTML and pipes escaped, lines joined with <br>."""
    parts = "<br>".join(line.strip() for line in text.strip().splitlines()).split("`")
    for index, part in enumerate(parts):
        escaped = part.replace("|", "\\|")
        parts[index] = escaped if index % 2 else escaped.replace("<br>", "\0").replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("\0", "<br>")


def _cell_code(source: str) -> str:
    """One-line source as a code span; several lines as a <pre> block that keeps the indentation."""
    first, *rest = source.strip().splitlines()
    if not rest:
        return "`" + first.replace("|", "\\|") + "`"
    body = [first, *textwrap.dedent("\n".join(rest)).splitlines()]
    return "<pre>" + "<br>".join(html.escape(line, quote=False).replace("|", "&#124;") for line in body) + "</pre>"


def module_blocks(module_dir: Path) -> list[Block]:
    """Every top-level block of the module's .tf files (override files excluded, as Terraform merges them)."""
    blocks: list[Block] = []
    for path in sorted(module_dir.glob("*.tf")):
        if path.stem == "override" or path.stem.endswith("_override"):
            continue
        try:
            blocks += parse_body(path.read_text())[1]
        except HclError as exc:
            raise SystemExit(f"{path}: {exc}") from exc
    return blocks


def render(module_dir: Path) -> str:
    """The Markdown between the markers: an inputs table and an outputs table, each sorted by name."""
    blocks = module_blocks(module_dir)
    variables = sorted((b for b in blocks if b.kind == "variable"), key=lambda b: b.labels[0])
    outputs = sorted((b for b in blocks if b.kind == "output"), key=lambda b: b.labels[0])
    lines = [
        BEGIN,
        "### Inputs",
        "",
        "| Name | Description | Type | Default | Required |",
        "|------|-------------|------|---------|:--------:|",
    ]
    for var in variables:
        attrs = var.attributes
        description = _cell_text(string_value(attrs["description"].source)) if "description" in attrs else ""
        type_ = _cell_code(attrs["type"].source) if "type" in attrs else "`any`"
        default = _cell_code(attrs["default"].source) if "default" in attrs else "n/a"
        required = "no" if "default" in attrs else "yes"
        lines.append(f"| `{var.labels[0]}` | {description} | {type_} | {default} | {required} |")
    lines += ["", "### Outputs", "", "| Name | Description |", "|------|-------------|"]
    for out in outputs:
        attrs = out.attributes
        description = _cell_text(string_value(attrs["description"].source)) if "description" in attrs else ""
        lines.append(f"| `{out.labels[0]}` | {description} |")
    lines.append(END)
    return "\n".join(lines)


def updated_readme(readme: str, tables: str, name: str = "README.md") -> str:
    """``readme`` with the text between the markers (inclusive) replaced by ``tables``."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{name} needs {BEGIN} and {END} (where its inputs and outputs belong)")
    return readme[:start] + tables + readme[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="README inputs/outputs tables from the modules' .tf files")
    parser.add_argument("--check", action="store_true", help="exit 1 when a README's tables are stale")
    args = parser.parse_args(argv)
    stale = 0
    for module_dir, readme in MODULES.items():
        name = readme.relative_to(ROOT).as_posix()
        current = readme.read_text()
        wanted = updated_readme(current, render(module_dir), name)
        if wanted == current:
            if args.check:
                print(f"{name}'s inputs/outputs tables are current")
        elif args.check:
            print(f"{name}'s inputs/outputs tables are stale: run `make docs` and commit {name}", file=sys.stderr)
            stale += 1
        else:
            readme.write_text(wanted)
            print(f"{name}: inputs/outputs tables rewritten")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
