"""The package as users install it, one audience per fresh virtualenv.

The distribution is built once (the sdist, then the wheel from that sdist, as ``python -m build``
does) from exactly the files the demo's Dockerfile copies to /src, and each venv gets it from pip
like a user's image would (dependencies from the package registry):

- the plain install, what a Celery image needs: Celery and nothing else; the worker helper stamps a
  real publish; boto3 and redis-py are absent; ``--version`` works; a subcommand names the extra;
- ``[scaler]``, what the Lambda zip holds: every module the zip holds imports, the probe reads Redis;
- ``[tools]``: ``measure`` reads Redis without loading the simulator, and ``simulate`` runs.
"""

from __future__ import annotations

import email
import email.message
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
import redis
from conftest import ROOT, redis_url_for

_spec = importlib.util.spec_from_file_location("build_zip", ROOT / "lambda" / "build_zip.py")
assert _spec is not None
assert _spec.loader is not None
build_zip = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_zip)  # the Lambda zip's own selection of the package's files

DB = 11
pytestmark = [pytest.mark.redis_db(DB), pytest.mark.timeout(600)]

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME, VERSION = PYPROJECT["name"], PYPROJECT["version"]
DOCKERFILE = ROOT / "examples" / "django-celery-app" / "Dockerfile"
QUEUE = "packaging"


def dockerfile_sources() -> list[tuple[Path, Path]]:
    """``(source, path under /src)`` for each ``COPY ... /src...`` line of the demo's Dockerfile."""
    copies: list[tuple[Path, Path]] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "COPY" and words[-1].startswith("/src"):
            into = Path(words[-1].removeprefix("/src").strip("/"))  # relative: a copy never leaves src
            for source in words[1:-1]:
                copies.append((ROOT / source, into / Path(source).name if words[-1].endswith("/") else into))
    return copies


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and the wheel, built from a copy of what the Dockerfile puts in /src."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for source, relative in dockerfile_sources():
        target = src / relative
        assert target.is_relative_to(src), relative
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def make_venv(where: Path, requirement: str) -> Path:
    """A fresh virtualenv (no site-packages of this one) holding ``requirement``; returns its bin dir."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", requirement]
    result = subprocess.run(install, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return where / "bin"


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120, check=False)


def installed(bin_dir: Path) -> set[str]:
    """Normalised names of every distribution in the venv."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {re.sub(r"[-_.]+", "-", d["name"]).lower() for d in json.loads(listing.stdout)}


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


@pytest.fixture(scope="module")
def worker_venv(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_venv(tmp_path_factory.mktemp("venv") / "worker", str(dist["wheel"]))


@pytest.fixture
def queued(redis_db: redis.Redis) -> str:
    """The tests' Redis URL with one message waiting on ``QUEUE`` (redis_db flushes it afterwards)."""
    redis_db.lpush(QUEUE, json.dumps({"headers": {"id": "1", "task": "t"}, "properties": {}}))
    return redis_url_for(DB)


def test_metadata_names_the_distribution_its_license_and_each_audiences_dependencies(dist: dict[str, Path]) -> None:
    metadata = wheel_metadata(dist["wheel"])
    assert (metadata["Name"], metadata["Version"]) == (NAME, VERSION)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    requires = metadata.get_all("Requires-Dist") or []
    assert [r for r in requires if "extra ==" not in r] == ["celery>=5.5"]  # the worker helper's only one
    scaler = sorted(r.split(";")[0] for r in requires if 'extra == "scaler"' in r)
    assert [re.split(r"[<>=]", r)[0] for r in scaler] == ["boto3", "redis"]
    assert [r.split(";")[0] for r in requires if 'extra == "tools"' in r] == [f"{NAME}[scaler]"]
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = archive.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file) == (ROOT / "LICENSE").read_bytes()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "celery-autoscaler = celery_autoscaler.cli:main" in archive.read(entry_points).decode()
    print(f"{dist['wheel'].name}: {metadata['License-Expression']}, requires {requires[:1]} + extras")


def test_plain_install_is_the_worker_helper_with_celery_only(worker_venv: Path) -> None:
    check = textwrap.dedent(
        """
        import importlib.util, json, sys, time
        from celery import Celery
        from celery_autoscaler.worker import install

        app = Celery("check", broker="memory://")
        install(app)
        before = time.time()
        app.send_task("check.task", queue="check")
        with app.connection_for_write() as connection:
            message = connection.SimpleQueue("check").get(timeout=10)
        print(json.dumps({
            "present": [m for m in ("boto3", "botocore", "redis") if importlib.util.find_spec(m)],
            "stamp": message.headers["x_published_at"], "before": before, "after": time.time(),
        }))
        """
    )
    result = run(worker_venv / "python", "-c", check)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["present"] == []
    assert seen["before"] <= float(seen["stamp"]) <= seen["after"]
    assert {"boto3", "botocore", "redis"}.isdisjoint(installed(worker_venv))
    pip_check = [sys.executable, "-m", "pip", "--python", str(worker_venv / "python"), "check"]
    assert subprocess.run(pip_check, capture_output=True, check=False).returncode == 0  # every requirement met
    print(f"worker venv: {len(installed(worker_venv))} distributions, stamp {seen['stamp']}")


def test_plain_install_prints_the_version_and_names_the_extra_a_subcommand_needs(worker_venv: Path) -> None:
    version = run(worker_venv / "celery-autoscaler", "--version")
    assert (version.returncode, version.stdout) == (0, f"celery-autoscaler {VERSION}\n")
    measure = run(worker_venv / "celery-autoscaler", "measure", "--broker-url", "redis://127.0.0.1:1/0", "--queue", "q")
    assert measure.returncode == 2, measure.stderr
    assert f"pip install '{NAME}[tools]'" in measure.stderr
    assert "Traceback" not in measure.stderr


def test_scaler_extra_holds_what_the_lambda_zip_runs(dist: dict[str, Path], tmp_path: Path, queued: str) -> None:
    bin_dir = make_venv(tmp_path / "scaler", f"{dist['wheel']}[scaler]")
    modules = sorted(
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in build_zip.package_files()
        if name.endswith(".py")
    )
    check = textwrap.dedent(
        f"""
        import importlib, json
        for name in {modules!r}:
            importlib.import_module(name)
        from celery_autoscaler.config import BrokerConfig
        from celery_autoscaler.probe import probe_for
        probe = probe_for(BrokerConfig(url={queued!r}), {queued!r})
        try:
            print(json.dumps(probe.measure([{QUEUE!r}]).queues[{QUEUE!r}].summary()))
        finally:
            probe.close()
        """
    )
    result = run(bin_dir / "python", "-c", check)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["waiting"] == 1
    assert {"boto3", "redis"} <= installed(bin_dir)
    print(f"scaler venv: imported {len(modules)} modules of the Lambda zip")


def test_tools_extra_measures_without_the_simulator_and_simulates(
    dist: dict[str, Path], tmp_path: Path, queued: str
) -> None:
    bin_dir = make_venv(tmp_path / "tools", f"{dist['wheel']}[tools]")
    measure = textwrap.dedent(
        f"""
        import sys
        from celery_autoscaler.cli import main
        code = main(["measure", "--broker-url", {queued!r}, "--queue", {QUEUE!r}, "--json"])
        assert code == 0, code
        loaded = [m for m in sys.modules if m.startswith("celery_autoscaler.sim")]
        assert not loaded, loaded
        """
    )
    result = run(bin_dir / "python", "-c", measure)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["queues"][QUEUE]["waiting"] == 1
    simulate = run(bin_dir / "celery-autoscaler", "simulate", "--trace", "steady", "--hours", "0.05", "--json")
    assert simulate.returncode == 0, simulate.stderr
    assert "celery-autoscaler" in json.loads(simulate.stdout)["policies"]


def test_docs_name_this_version_in_the_source_line_install_lines_and_changelog() -> None:
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"\?ref=v([^\"\s]+)\"", readme)) == {VERSION}
    documents = [ROOT / "README.md", DOCKERFILE, *ROOT.glob("docs/*.md"), *ROOT.glob("examples/*/README.md")]
    pinned = {
        str(d.relative_to(ROOT)): set(re.findall(rf"{NAME}(?:\[\w+\])?==([\w.]+)", d.read_text())) for d in documents
    }
    assert {v for versions in pinned.values() for v in versions} == {VERSION}, pinned
    assert all(versions for name, versions in pinned.items() if name.startswith("examples/")), pinned  # every example
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## \[([^\]]+)\].*?(?=^## \[)", changelog, re.M | re.S)
    assert newest is not None
    assert newest[1] == VERSION or (newest[1] == "Unreleased" and f"The {VERSION} release" in newest[0])
