"""The committed Lambda zip is what a fresh build produces, and it imports on the Lambda's Python.

Terraform deploys the committed file, so a stale zip would ship old code; a zip that misses a module
(or pulls redis from somewhere else) would only fail in AWS. Both are caught here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZIP = ROOT / "lambda" / "dist" / "celery-autoscaler-lambda.zip"
LAMBDA_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3.12"  # the Lambda runtime's version
# The Lambda runtime provides boto3 and its dependencies; nothing else outside the zip.
RUNTIME_PACKAGES = ("boto3", "botocore", "jmespath", "s3transfer", "urllib3", "dateutil", "six")

IMPORT_ALL = """
import importlib, importlib.metadata, pathlib, sys
zipdir = pathlib.Path(sys.argv[1])
modules = sorted(
    ".".join(p.relative_to(zipdir).with_suffix("").parts).removesuffix(".__init__")
    for p in (zipdir / "celery_autoscaler").rglob("*.py")
)
for name in modules:
    importlib.import_module(name)
import redis
assert pathlib.Path(redis.__file__).is_relative_to(zipdir), redis.__file__
from celery_autoscaler.handler import lambda_handler  # the module's aws_lambda_function.handler
assert callable(lambda_handler)
import datetime, tzdata, zoneinfo  # named zones without a system tz database (the test empties PYTHONTZPATH)
assert pathlib.Path(tzdata.__file__).is_relative_to(zipdir), tzdata.__file__
assert zoneinfo.ZoneInfo("Europe/Berlin").utcoffset(datetime.datetime(2026, 7, 1)) == datetime.timedelta(hours=2)
print(sys.version.split()[0], importlib.metadata.version("redis"), " ".join(modules))
"""


def lambda_python() -> str:
    """Python 3.12 like the Lambda runtime when this machine has it, else the test's own Python."""
    return LAMBDA_PYTHON if Path(LAMBDA_PYTHON).is_file() else (shutil.which("python3.12") or sys.executable)


def test_committed_zip_equals_fresh_build() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "lambda" / "build_zip.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout
    print(result.stdout.strip())


def test_zip_entries_are_normalised_and_hold_only_the_lambdas_code() -> None:
    with zipfile.ZipFile(ZIP) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}
    tops = {n.split("/")[0] for n in names}
    assert tops == {"celery_autoscaler", "redis", "redis-8.1.0.dist-info", "tzdata", "tzdata-2026.6.dist-info"}
    for unwanted in ("/sim/", "/demo", "/worker.py", "/worker_drain.py", "/cli.py", "__pycache__", ".pyc", "/tests/"):
        assert not [n for n in names if unwanted in n], unwanted
    print(f"{ZIP.name}: {ZIP.stat().st_size} bytes, {len(names)} files")


def test_zip_imports_with_only_the_lambda_runtime_beside_it(tmp_path: Path) -> None:
    zipdir, runtime = tmp_path / "zip", tmp_path / "runtime"
    runtime.mkdir()
    with zipfile.ZipFile(ZIP) as archive:
        archive.extractall(zipdir)
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        assert spec.origin is not None, name
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (runtime / source.name).symlink_to(source)
    # -S: no site-packages; the zip comes first on the path, as /var/task does in Lambda.
    code = f"import sys; sys.path[:0] = {[str(zipdir), str(runtime)]!r}\n{IMPORT_ALL}"
    result = subprocess.run(
        [lambda_python(), "-S", "-B", "-c", code, str(zipdir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONTZPATH": ""},
    )
    assert result.returncode == 0, result.stderr
    version, redis_version, *modules = result.stdout.split()
    assert redis_version == "8.1.0"
    assert "celery_autoscaler.handler" in modules
    print(f"imported {len(modules)} modules on Python {version} with redis {redis_version}")
