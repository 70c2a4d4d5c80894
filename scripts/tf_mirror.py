#!/usr/bin/env python3
"""The Terraform CLI config that installs providers from an offline filesystem mirror, if there is one.

A mirror is a folder holding ``registry.terraform.io/`` (``TF_PLUGIN_DIR``, default /opt/tf-plugins).
``make`` writes the config to .tmp/ and exports ``TF_CLI_CONFIG_FILE``; tests/conftest.py does the same
when pytest runs on its own, so every ``terraform init`` (tests, demo, pre-commit hooks) finds the
providers one way. Without a mirror nothing is written, the environment is left alone and
``terraform init`` uses the registry. Stdlib only: make runs it before any virtualenv exists.

Usage: ``python scripts/tf_mirror.py PATH``: writes the config to PATH and prints PATH's absolute
path, or prints nothing when there is no mirror.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

DEFAULT_PLUGIN_DIR = "/opt/tf-plugins"


def find_mirror(environ: Mapping[str, str]) -> Path | None:
    """``TF_PLUGIN_DIR`` (or the default) when it holds providers in the mirror layout."""
    directory = Path(environ.get("TF_PLUGIN_DIR") or DEFAULT_PLUGIN_DIR)
    return directory.resolve() if (directory / "registry.terraform.io").is_dir() else None


def cli_config(mirror: Path) -> str:
    """Every provider from the mirror only, as ``terraform init -plugin-dir`` would, so a provider
    missing from it fails at once instead of reaching for the network."""
    return f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n'


def write_cli_config(path: Path, environ: Mapping[str, str]) -> Path | None:
    """Write the config for this machine's mirror to ``path`` (atomically: parallel runs share it)."""
    mirror = find_mirror(environ)
    if mirror is None:
        return None
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(cli_config(mirror))
    partial.replace(path)
    return path


def use_mirror(path: Path, environ: MutableMapping[str, str]) -> Path | None:
    """Point ``environ``'s ``TF_CLI_CONFIG_FILE`` at the mirror's config at ``path``, as ``make`` does."""
    written = write_cli_config(path, environ)
    if written is not None:
        environ["TF_CLI_CONFIG_FILE"] = str(written)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    written = write_cli_config(Path(argv[0]), os.environ)
    if written is not None:
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
