"""Docs that work when copied: every fenced code block of README.md, docs/**/*.md and modules/*/README.md is exercised
verbatim (read from the Markdown, never retyped here), and every relative link and #anchor resolves.

A block's tag is the first word of its info string (```` ```bash ````); words after it are options of
that tag. An untagged block, an unknown tag or option, and a command without a rule fail with the
block's file:line. The tags (docs/development.md says the same for writers):

``bash``
    Commands, one per line (``#`` comments, blank lines and ``\\`` continuations allowed; leading
    ``NAME=value`` assignments are the command's environment). Each is checked by the rule for its
    program: ``make TARGET [VAR=value]`` must pass ``make -n`` (a dry run: ``make test`` or
    ``make demo`` take minutes, so no target is run); ``celery-autoscaler ...`` must parse with the
    CLI's own parser, and ``measure`` is also run, against the tests' Redis (a documented
    ``localhost:6379`` address is pointed there); ``pip install REQUIREMENT`` (not run: the
    package index may not have this checkout's version yet) must name this project's distribution,
    extras it declares and, when pinned, its version. Any other program fails until it gets a rule.
``console``
    A session: lines starting with ``$ `` are commands (checked as in ``bash``); the lines after a
    command are its output. Output of a command that is run, when JSON, must hold every key the docs
    show (the real output may have more).
``dockerfile``
    Dockerfile lines; each ``RUN`` command is checked as in ``bash`` (other instructions have no
    rule yet and fail).
``python``
    Run in a fresh interpreter of this virtualenv, in a temporary directory that holds ``proj/``
    (the user's project the snippets name: ``proj.celeryconfig`` points at the tests' Redis); it must
    exit 0.
``json``
    A scaler config document: ``celery_autoscaler.config.load_config`` must accept it.
``hcl``
    A Terraform configuration using this module: the ``source`` of each ``module`` block is pointed
    at this checkout (a ``//subdir`` in it at that folder), then ``terraform init -backend=false``
    and ``terraform validate`` must pass. As Terraform drops object attributes it does not know
    without a word, every argument and attribute name must also be declared in the module's
    variables.tf (names inside ``map(string)`` values and the keys of ``map(object)`` values are
    free). Option ``module-arguments``: the block is arguments of the module block; it is wrapped in
    ``module "celery" { source = ... }`` with placeholder values for the required variables it does
    not set.
``redis-acl``
    One ``ACL SETUSER`` line, sent as written with ``redis-cli`` to the tests' Redis; the Redis probe
    connected as that user must then measure what the default user measures, and the drainer (fence
    and drain) must read and write a pool's drain as that user (removed after). Option
    ``read-only``: the drainer must be refused instead.
``rabbitmqctl``
    ``rabbitmqctl`` lines, run as written against the tests' private RabbitMQ node (its environment
    names the node). The block must add a vhost and a user: the RabbitMQ probe connected as that user
    must then measure what the node's administrator measures, and the user must be refused consuming
    and publishing (vhost and user removed after).
``diff``
    A change: its new side (context lines and ``+`` lines, markers dropped) is checked as a block of
    the tag its options name (``diff hcl module-arguments``); the old side is not run.
``text``
    Diagrams, layouts and other text that is not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import pytest
import redis
from amqp.exceptions import AccessRefused
from brokers import RabbitBroker
from celery_apps import publish
from conftest import ROOT, redis_url_for
from kombu import Connection, Producer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from waiting import wait_until

from celery_autoscaler.cli import build_parser
from celery_autoscaler.config import BrokerConfig, load_config
from celery_autoscaler.drain import DrainError, DrainPlan, drainer_for
from celery_autoscaler.drain_keys import drain_key
from celery_autoscaler.probe.rabbitmq import RabbitMQProbe
from celery_autoscaler.probe.redis import RedisProbe

DB = 10  # this file's own db of the tests' Redis (faults and packaging use 11)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "modules").glob("*/README.md"))]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
DOCUMENTED_REDIS = re.compile(r"^redis://(localhost|127\.0\.0\.1)(:6379)?(/\d+)?$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    end: int  # of the closing fence
    tag: str
    options: tuple[str, ...]
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of one Markdown file, in order (CommonMark fences, up to 3 spaces in)."""
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]):
            line = lines[end]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            end += 1
        words = opening["info"].split()
        yield Block(path, index + 1, end + 1, words[0] if words else "", tuple(words[1:]), "\n".join(body) + "\n")
        index = end + 1


BLOCKS = [block for path in DOCS for block in fenced_blocks(path)]


# ------------------------------------------------------------------------------------------ commands


def commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(line, words) of each command of a ``bash`` block: comments dropped, continuations joined."""
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield line, words


def session(text: str) -> Iterator[tuple[str, list[str], str]]:
    """(line, words, output) of each ``$ `` command of a ``console`` block."""
    lines = text.replace("\\\n", " ").splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("$ "):
            continue
        output = []
        for following in lines[index + 1 :]:
            if following.startswith(("$ ", "#")) or not following.strip():
                break
            output.append(following)
        yield line, shlex.split(line[2:], comments=True), "\n".join(output)


def split_environment(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` words are the command's environment."""
    env: dict[str, str] = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        name, value = words[0].split("=", 1)
        env[name] = value
        words = words[1:]
    return env, words


def check_make(where: str, env: dict[str, str], args: list[str]) -> str | None:
    result = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{where}: `make -n {' '.join(args)}` failed:\n{result.stdout}{result.stderr}"
    return None


def check_cli(where: str, env: dict[str, str], args: list[str]) -> str | None:
    """Parse with the CLI's own parser; run ``measure`` (read-only, fast) against the tests' Redis."""
    script = Path(sys.executable).with_name("celery-autoscaler")
    assert script.exists(), f"{where}: the console script celery-autoscaler is not installed ({script})"
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: `celery-autoscaler {' '.join(args)}` does not parse (exit {exc.code})")
    if args[:1] != ["measure"]:
        return None
    run_args = [redis_url_for(DB) if DOCUMENTED_REDIS.match(a) else a for a in args]
    assert not any(a.startswith(("redis://", "rediss://")) for a in set(run_args) - {redis_url_for(DB)}), (
        f"{where}: measure names a broker other than localhost:6379, which the test cannot point at its own Redis"
    )
    result = subprocess.run(
        [str(script), *run_args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{where}: `celery-autoscaler {' '.join(run_args)}`:\n{result.stderr}"
    return result.stdout


def check_pip(where: str, env: dict[str, str], args: list[str]) -> str | None:
    """``pip install`` of this project: its distribution name, declared extras, its version if pinned."""
    assert args[:1] == ["install"], f"{where}: only `pip install` has a rule"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(a) for a in args[1:] if not a.startswith("-")]
    assert requirements, f"{where}: installs nothing"
    for requirement in requirements:
        assert canonicalize_name(requirement.name) == canonicalize_name(project["name"]), (
            f"{where}: {requirement.name} is not this project's distribution ({project['name']})"
        )
        extras = requirement.extras - set(project.get("optional-dependencies", {}))
        assert not extras, f"{where}: {project['name']} declares no extra {sorted(extras)}"
        assert not requirement.specifier or project["version"] in requirement.specifier, (
            f"{where}: {requirement.specifier} does not match this checkout's version {project['version']}"
        )
    return None


PROGRAMS: dict[str, Callable[[str, dict[str, str], list[str]], str | None]] = {
    "make": check_make,
    "celery-autoscaler": check_cli,
    "pip": check_pip,
}


def check_command(where: str, line: str, words: list[str]) -> str | None:
    """The rule for the command's program; what it printed when it was run, else None."""
    env, words = split_environment(words)
    assert words, f"{where}: `{line}` has no command"
    rule = PROGRAMS.get(words[0])
    assert rule, f"{where}: no rule for `{words[0]}` (in `{line}`): add one to PROGRAMS in tests/test_docs.py"
    return rule(f"{where} `{line.strip()}`", env, words[1:])


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON value as a dotted path; a dict of names (queues, pools) keeps its names."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{prefix}{k}", *key_paths(v, f"{prefix}{k}.")}}
    return set()


def run_bash(block: Block) -> None:
    for line, words in commands(block.text):
        check_command(block.where, line, words)


def run_dockerfile(block: Block) -> None:
    for line in block.text.replace("\\\n", " ").splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if not instruction or instruction.startswith("#"):
            continue
        assert instruction.upper() == "RUN", f"{block.where}: no rule for the Dockerfile instruction {instruction}"
        for command in rest.split("&&"):
            check_command(block.where, line, shlex.split(command, comments=True))


def run_console(block: Block) -> None:
    ran = list(session(block.text))
    assert ran, f"{block.where}: a console block without `$ ` commands (tag it bash or text)"
    for line, words, documented in ran:
        printed = check_command(block.where, line, words)
        if printed is None or not documented:
            continue
        try:
            shown = json.loads(documented)
        except json.JSONDecodeError:
            continue  # a table: not compared
        missing = key_paths(shown) - key_paths(json.loads(printed))
        assert not missing, f"{block.where}: `{line}` prints no {sorted(missing)} (it printed {printed})"


# ----------------------------------------------------------------------------------- other blocks


def run_python(block: Block, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "__init__.py").write_text("")
    (project / "celeryconfig.py").write_text(f"broker_url = {redis_url_for(DB)!r}\n")
    result = subprocess.run(
        [sys.executable, "-c", block.text],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.where}: the python block failed:\n{result.stderr[-3000:]}"


def run_json(block: Block) -> None:
    try:
        load_config(block.text)
    except Exception as exc:
        pytest.fail(f"{block.where}: the scaler rejects this config: {exc}")


# Placeholders for the module's required variables, for a block of module arguments.
REQUIRED_ARGUMENTS = {
    "name": '"docs-example"',
    "vpc_id": '"vpc-0123456789abcdef0"',
    "subnet_ids": '["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]',
    "worker_pools": '{ default = { image = "public.ecr.aws/docker/library/python:3.12", queues = ["celery"] } }',
}


def local_module(source: str) -> Path:
    """This checkout's folder for a documented module source: the root, or its ``//subdir``."""
    subdir = re.search(r"[^:/]//([^?]+)", source)
    return ROOT / subdir[1] if subdir else ROOT


def point_modules_here(hcl: str, directory: Path) -> tuple[str, list[tuple[Path, str]]]:
    """Each ``module`` block's ``source`` becomes this checkout, relative to ``directory``.

    Returns the new text and, per module block, the module's folder and the block's body.
    """
    out: list[str] = []
    modules: list[tuple[Path, str]] = []
    body: list[str] | None = None
    depth = 0
    for line in hcl.splitlines():
        opens_module = depth == 0 and re.match(r'^\s*module\s+"[^"]+"\s*\{\s*$', line)
        if body is not None and depth == 1 and (source := re.match(r'^(\s*source\s*=\s*)"([^"]*)"(.*)$', line)):
            modules.append((local_module(source[2]), ""))
            line = f'{source[1]}"{os.path.relpath(modules[-1][0], directory)}"{source[3]}'
        depth += line.count("{") - line.count("}")
        if body is not None and depth == 0:
            if modules and not modules[-1][1]:
                modules[-1] = (modules[-1][0], "\n".join(body))
            body = None
        elif body is not None:
            body.append(line)
        if opens_module:
            body = []
        out.append(line)
    return "\n".join(out) + "\n", modules


META_ARGUMENTS = {"source", "version", "providers", "count", "for_each", "depends_on"}


def module_schema(module: Path) -> tuple[set[str], set[str], set[str]]:
    """(every name a caller may write, names whose values have free keys, names that map keys to objects).

    Read from the module's variables.tf: variable names, and the attribute names of their types.
    """
    text = "\n".join(p.read_text() for p in sorted(module.glob("*.tf")))
    names, free, keyed = set(META_ARGUMENTS), set(), set()
    typed = [(m[1], m[2]) for m in re.finditer(r'variable\s+"(\w+)"\s*\{.*?\n\s*type\s*=\s*([^\n]*)', text, re.S)]
    attributes = re.findall(r"^\s*(\w+)\s*=\s*(.*)$", text, re.MULTILINE)
    for name, type_expr in [*typed, *attributes]:
        names.add(name)
        outer = re.sub(r"^optional\(\s*", "", type_expr.strip())
        if outer.startswith("map(object"):
            keyed.add(name)
        elif outer.startswith(("map(", "any")):
            free.add(name)
    return names, free, keyed


def unknown_names(hcl: str, module: Path) -> list[str]:
    """Argument and attribute names in a module block's body that the module does not declare."""
    names, free, keyed = module_schema(module)
    unknown: list[str] = []
    contexts = ["check"]  # per open brace: "check" names, "free" (map values), "keyed" (map of objects)
    pending = "check"
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|#[^\n]*|//[^\n]*|\b(\w+)\s*=(?!=)|[{}]', hcl):
        if token[0] == "{":
            contexts.append(pending)
            pending = "check"
        elif token[0] == "}":
            contexts.pop()
        elif token[1]:
            key, context = token[1], contexts[-1]
            if context == "check" and key not in names:
                unknown.append(key)
            if context == "free" or (context == "check" and key in free):
                pending = "free"
            else:
                pending = "keyed" if context == "check" and key in keyed else "check"
    return unknown


def module_call(arguments: str) -> str:
    """A module block around ``arguments``, adding placeholders for the required variables they lack."""
    present = set(re.findall(r"^\s*(\w+)\s*=", arguments, re.MULTILINE))
    placeholders = [f"  {name} = {value}" for name, value in REQUIRED_ARGUMENTS.items() if name not in present]
    return 'module "celery" {\n  source = "."\n' + "\n".join(placeholders) + "\n" + arguments + "}\n"


def run_hcl(block: Block, tmp_path: Path) -> None:
    unknown = set(block.options) - {"module-arguments"}
    assert not unknown, f"{block.where}: unknown hcl option(s) {sorted(unknown)}"
    text = module_call(block.text) if "module-arguments" in block.options else block.text
    hcl, modules = point_modules_here(text, tmp_path)
    assert modules, f"{block.where}: no module block of this repository to validate"
    for module, body in modules:
        unknown = unknown_names(body, module)
        assert not unknown, f"{block.where}: {module.relative_to(ROOT)}/variables.tf declares no {unknown}"
    (tmp_path / "main.tf").write_text(hcl)
    env = {**os.environ, "TF_DATA_DIR": str(tmp_path / ".terraform"), "TF_IN_AUTOMATION": "1", "NO_COLOR": "1"}
    env["CHECKPOINT_DISABLE"] = "1"
    for args in (["init", "-backend=false", "-input=false"], ["validate"]):
        result = subprocess.run(
            ["terraform", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"{block.where}: terraform {args[0]} failed on\n{(tmp_path / 'main.tf').read_text()}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def run_redis_acl(block: Block) -> None:
    """The documented ACL line as written, then the probe as that user measures what the default user does.

    The drainer as that user opens and ends a drain, or (``read-only``) is refused.
    """
    unknown = set(block.options) - {"read-only"}
    assert not unknown, f"{block.where}: unknown redis-acl option(s) {sorted(unknown)}"
    lines = [line for line in block.text.splitlines() if line.strip()]
    assert len(lines) == 1, f"{block.where}: a redis-acl block holds exactly one ACL SETUSER line"
    words = shlex.split(lines[0])
    assert [w.upper() for w in words[:2]] == ["ACL", "SETUSER"], f"{block.where}: not an ACL SETUSER line"
    user, passwords = words[2], [w[1:] for w in words[3:] if w.startswith(">")]
    assert passwords, f"{block.where}: the ACL line sets no password (>...), so nobody could log in as {user}"
    admin = redis.Redis.from_url(redis_url_for(DB))
    assert not admin.execute_command("ACL", "GETUSER", user), f"{user} already exists on the tests' Redis"
    server = urlparse(redis_url_for(DB))
    cli = ["redis-cli", "-h", str(server.hostname), "-p", str(server.port), "--no-raw", *words]
    try:
        result = subprocess.run(cli, capture_output=True, text=True, timeout=30, check=False)
        refused = f"{block.where}: Redis refused the ACL line: {result.stdout}{result.stderr}"
        assert result.returncode == 0, refused
        assert result.stdout.strip() == "OK", refused
        queues = ["celery", "video"]
        publish(redis_url_for(DB), 3, queue="celery")
        # One message held by a worker, as kombu keeps it: the probe's scan of the unacked hash runs too.
        message = json.loads(admin.lindex("celery", -1) or b"{}")
        admin.hset("unacked", uuid.uuid4().hex, json.dumps([message, "", "celery"]))
        now = 2_000_000_000.0
        expected = RedisProbe(BrokerConfig(), url=redis_url_for(DB), clock=lambda: now).measure(queues)
        restricted_url = f"redis://{user}:{passwords[0]}@{server.hostname}:{server.port}/{DB}"
        try:
            measured = RedisProbe(BrokerConfig(), url=restricted_url, clock=lambda: now).measure(queues)
        except Exception as exc:
            pytest.fail(f"{block.where}: the probe connected as {user} failed: {exc}")
        assert (measured.queues, measured.unacked_total) == (expected.queues, expected.unacked_total)
        assert expected.queues["celery"].waiting == 3
        assert expected.unacked_total == 1
        drainer = drainer_for(BrokerConfig(), restricted_url)
        assert drainer is not None
        if "read-only" in block.options:
            with pytest.raises(DrainError, match="NoPermissionError"):
                drainer.status(["default"])
        else:
            try:
                drainer.apply("default", DrainPlan(desired=1, open=1), now)
                assert drainer.status(["default"])["default"].active
                drainer.apply("default", DrainPlan(desired=1, open=None), now)
            except DrainError as exc:
                pytest.fail(f"{block.where}: the drainer connected as {user} failed: {exc}")
            assert not admin.exists(drain_key("", "default"))
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def run_rabbitmqctl(block: Block, rabbitmq: RabbitBroker) -> None:
    """The documented rabbitmqctl lines as written; that user measures what the admin does, drains, and no more."""
    lines = [shlex.split(line) for line in block.text.splitlines() if line.strip() and not line.startswith("#")]
    assert all(words[0] == "rabbitmqctl" for words in lines), f"{block.where}: only rabbitmqctl lines"
    user, password = next((w[2], w[3]) for w in lines if w[1] == "add_user")
    vhost = next(w[2] for w in lines if w[1] == "add_vhost")
    path = quote(vhost, safe="")
    try:
        for words in lines:
            ran = rabbitmq.rabbitmqctl(*words[1:])
            assert ran.returncode == 0, f"{block.where}: {shlex.join(words)} failed: {ran.stdout}{ran.stderr}"
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        rabbitmq.management_request("PUT", f"/api/permissions/{path}/{rabbitmq.user}", everything)
        host = urlparse(rabbitmq.amqp_url).netloc.rsplit("@", 1)[1]
        admin_url = f"amqp://{rabbitmq.user}:{rabbitmq.password}@{host}/{path}"
        user_url = f"amqp://{user}:{quote(password, safe='')}@{host}/{path}"
        publish(admin_url, 3, queue="celery")
        settings = BrokerConfig(management_url=rabbitmq.management_url)
        admin = RabbitMQProbe.from_config(settings, admin_url)
        expected = wait_until(lambda: (m := admin.measure(["celery"])).queues["celery"].waiting == 3 and m)
        try:
            measured = RabbitMQProbe.from_config(settings, user_url).measure(["celery"])
        except Exception as exc:
            pytest.fail(f"{block.where}: the probe connected as {user} failed: {exc}")
        assert (measured.queues, measured.unacked_total) == (expected.queues, expected.unacked_total)
        drainer = drainer_for(settings, user_url)  # fence and drain works as that user, on its own queues only
        assert drainer is not None
        drainer.status(["default"])
        drainer.apply("default", DrainPlan(desired=2, open=1), 1_800_000_000.0)
        drain = drainer.status(["default"])["default"]
        assert (drain.active, drain.open, drain.since) == (True, 1, 1_800_000_000.0)
        drainer.apply("default", DrainPlan(desired=2, open=None), 1_800_000_000.0)
        assert not drainer.status(["default"])["default"].active
        with Connection(user_url) as connection, pytest.raises(AccessRefused):
            connection.channel().basic_get("celery")
        confirmed = {"confirm_publish": True}  # the broker's refusal is then the publish's answer
        with Connection(user_url, transport_options=confirmed) as connection, pytest.raises(AccessRefused):
            Producer(connection.channel()).publish({"n": 1}, routing_key="celery")
    finally:
        with contextlib.suppress(urllib.error.HTTPError):
            rabbitmq.management_request("DELETE", f"/api/vhosts/{path}")
        with contextlib.suppress(urllib.error.HTTPError):
            rabbitmq.management_request("DELETE", f"/api/users/{user}")


# ------------------------------------------------------------------------------------------- tests


@pytest.fixture
def docs_db() -> Iterator[redis.Redis]:
    """This file's db, empty before and after each block."""
    client = redis.Redis.from_url(redis_url_for(DB))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_block_works_as_written(
    block: Block, tmp_path: Path, docs_db: redis.Redis, request: pytest.FixtureRequest
) -> None:
    if block.tag == "text":
        return
    if block.tag in {"bash", "console", "dockerfile", "json", "rabbitmqctl", "python"}:
        assert not block.options, f"{block.where}: {block.tag} takes no options, got {block.options}"
    if block.tag == "diff":
        assert block.options, f"{block.where}: say which tag the new side is (```diff hcl ...)"
        new_side = [line[1:] for line in block.text.splitlines() if line[:1] in {" ", "+", ""}]
        new = Block(block.path, block.line, block.end, block.options[0], block.options[1:], "\n".join(new_side) + "\n")
        assert new.tag not in {"diff", "text"}, f"{block.where}: the new side of a diff must be runnable"
        test_block_works_as_written(new, tmp_path, docs_db, request)
        return
    runners: dict[str, Callable[[], None]] = {
        "bash": lambda: run_bash(block),
        "console": lambda: run_console(block),
        "dockerfile": lambda: run_dockerfile(block),
        "python": lambda: run_python(block, tmp_path),
        "json": lambda: run_json(block),
        "hcl": lambda: run_hcl(block, tmp_path),
        "redis-acl": lambda: run_redis_acl(block),
        "rabbitmqctl": lambda: run_rabbitmqctl(block, request.getfixturevalue("rabbitmq")),
    }
    run = runners.get(block.tag)
    assert run, f"{block.where}: {'untagged block' if not block.tag else f'unknown tag {block.tag!r}'}: tag it " + (
        "with one of " + ", ".join(sorted([*runners, "diff", "text"])) + " (see tests/test_docs.py)"
    )
    run()


# ---------------------------------------------------------------------------------------------- links


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lower-cased, punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*\*|__|\*|`)", "", text)  # emphasis and code marks
    text = text.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def outside_code(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a Markdown file outside fenced blocks, inline code spans blanked."""
    fenced_lines = {number for b in fenced_blocks(path) for number in range(b.line, b.end + 1)}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number not in fenced_lines:
            yield number, re.sub(r"(`+)[^`]*?\1", "", line)


def anchors(path: Path) -> set[str]:
    """Every #anchor of a Markdown file: heading slugs (repeats get -1, -2, ...) and explicit ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in outside_code(path):
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading[1])
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
        found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return found


def relative_links(path: Path) -> Iterator[tuple[int, str]]:
    """(line, target) of every inline or reference link and image that is not a URL with a scheme."""
    for number, line in outside_code(path):
        targets = re.findall(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", line)
        targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", line)
        targets += re.findall(r"<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"", line)
        for target in targets:
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                yield number, target


def test_every_relative_link_and_anchor_resolves() -> None:
    dead = []
    for doc in DOCS:
        for number, target in relative_links(doc):
            file_part, _, anchor = target.partition("#")
            destination = (doc.parent / unquote(file_part)).resolve() if file_part else doc
            where = f"{doc.relative_to(ROOT)}:{number}: {target}"
            if not destination.exists():
                dead.append(f"{where} (no such file)")
            elif anchor and destination.suffix == ".md" and unquote(anchor) not in anchors(destination):
                dead.append(f"{where} (no such heading in {destination.relative_to(ROOT)})")
            elif ROOT not in destination.parents and destination != ROOT:
                dead.append(f"{where} (outside the repository)")
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_the_link_checker_knows_githubs_slugs() -> None:
    """The slug rules the link check relies on, on headings of the shapes the docs use."""
    assert github_slug("How it scales") == "how-it-scales"
    assert github_slug("`make demo` and `make test`") == "make-demo-and-make-test"
    assert github_slug("Safe scale-in: what ECS does") == "safe-scale-in-what-ecs-does"
    assert github_slug("Costs (at the defaults), per month") == "costs-at-the-defaults-per-month"
    assert github_slug("[Links](docs/x.md) **bold** x_y") == "links-bold-x_y"


def test_fences_are_read_as_github_reads_them(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n\n```\nplain\n```\n\n- item\n\n  ```hcl module-arguments\n  a = 1\n  ```\n\n"
        "````text\n```\ninner\n```\n````\n\n~~~python\nprint(1)\n~~~\n"
    )
    found = [(b.line, b.end, b.tag, b.options, b.text) for b in fenced_blocks(page)]
    assert found == [
        (3, 5, "", (), "plain\n"),
        (9, 11, "hcl", ("module-arguments",), "a = 1\n"),
        (13, 17, "text", (), "```\ninner\n```\n"),
        (19, 21, "python", (), "print(1)\n"),
    ]


@pytest.mark.parametrize(("tag", "message"), [("", "untagged block"), ("yaml", "unknown tag 'yaml'")])
def test_a_block_without_a_known_tag_fails_with_its_place(
    tag: str, message: str, tmp_path: Path, docs_db: redis.Redis, request: pytest.FixtureRequest
) -> None:
    block = Block(ROOT / "README.md", 12, 14, tag, (), "key: value\n")
    with pytest.raises(AssertionError, match=f"^README.md:12: {message}"):
        test_block_works_as_written(block, tmp_path, docs_db, request)
