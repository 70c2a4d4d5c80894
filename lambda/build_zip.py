#!/usr/bin/env python3
"""Build the scaler's Lambda zip byte for byte reproducibly, so the committed zip can be checked in CI.

The Terraform module deploys ``lambda/dist/celery-autoscaler-lambda.zip`` with ``source_code_hash``
taken from the file: any byte that changes without a code change would make every ``terraform plan``
show a diff, and any code change that is not rebuilt would deploy old code. So the zip holds only what
the Lambda runs (the ``celery_autoscaler`` package without the simulator, demo, CLI and worker helper,
plus redis-py from a pinned, hash-checked wheel) with sorted entries, a fixed timestamp, fixed modes and
a fixed compression method and level. Stdlib only, so it runs before any virtualenv exists.

Usage: ``python lambda/build_zip.py`` (write the zip) or ``python lambda/build_zip.py --check`` (exit 1
when the committed zip differs from a fresh build).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

LAMBDA_DIR = Path(__file__).resolve().parent
PACKAGE_DIR = LAMBDA_DIR / "celery_autoscaler"
OUTPUT = LAMBDA_DIR / "dist" / "celery-autoscaler-lambda.zip"
WHEEL_CACHE = LAMBDA_DIR / "build"  # git-ignored; saves a pip call on rebuilds

REDIS_VERSION = "8.1.0"
REDIS_WHEEL = f"redis-{REDIS_VERSION}-py3-none-any.whl"
# sha256 of the PyPI wheel: a different file under the same name must never reach the Lambda.
REDIS_WHEEL_SHA256 = "a4fe1aac3d3b3cc791d4b3d5931c5a956045dc951ee74d1c913ee3ac4d2ee9fb"

# Parts of the package the Lambda never imports: the simulator, the CLI and the helper users install
# in their Celery workers. The zip import test imports every module that remains, so excluding
# something the handler needs fails a test.
EXCLUDED = frozenset({"sim", "cli.py", "worker.py", "worker_drain.py"})
INCLUDED_SUFFIXES = (".py", ".typed")

FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
FILE_MODE = 0o100644  # regular file, rw-r--r--, whatever the checkout's umask was
COMPRESS_LEVEL = 9


def package_files() -> dict[str, bytes]:
    """The package's source files keyed by their path in the zip."""
    files: dict[str, bytes] = {}
    for path in sorted(PACKAGE_DIR.rglob("*")):
        relative = path.relative_to(PACKAGE_DIR)
        if not path.is_file() or path.suffix not in INCLUDED_SUFFIXES:
            continue
        if relative.parts[0] in EXCLUDED or "__pycache__" in relative.parts:
            continue
        files[f"celery_autoscaler/{relative.as_posix()}"] = path.read_bytes()
    return files


def redis_wheel(wheel: Path | None) -> bytes:
    """The pinned redis-py wheel's bytes, from ``wheel`` or the cache or ``pip download``; hash-checked."""
    if wheel is None:
        wheel = WHEEL_CACHE / REDIS_WHEEL
        if not wheel.is_file():
            WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
            pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
            subprocess.run([*pip, "--dest", str(WHEEL_CACHE), f"redis=={REDIS_VERSION}"], check=True)
    data = wheel.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != REDIS_WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {REDIS_WHEEL_SHA256}")
    return data


def wheel_files(wheel_bytes: bytes) -> dict[str, bytes]:
    """Every file of the wheel: the ``redis`` package and its dist-info (licence, version metadata)."""
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
        return {info.filename: wheel.read(info) for info in wheel.infolist() if not info.is_dir()}


def build(destination: Path, wheel: Path | None = None) -> None:
    """Write the zip to ``destination``: entries sorted by name, every header field fixed."""
    files = package_files() | wheel_files(redis_wheel(wheel))
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            info.create_system = 3  # Unix, so the mode bits below mean the same everywhere
            info.external_attr = FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name], compresslevel=COMPRESS_LEVEL)


def describe_difference(committed: Path, fresh: Path) -> str:
    """Say which entries differ, so a stale zip names the source files that changed."""
    with zipfile.ZipFile(committed) as old, zipfile.ZipFile(fresh) as new:
        old_crc = {i.filename: i.CRC for i in old.infolist()}
        new_crc = {i.filename: i.CRC for i in new.infolist()}
    lines = [f"  + {n}" for n in sorted(new_crc.keys() - old_crc.keys())]
    lines += [f"  - {n}" for n in sorted(old_crc.keys() - new_crc.keys())]
    lines += [f"  ~ {n}" for n in sorted(old_crc.keys() & new_crc.keys()) if old_crc[n] != new_crc[n]]
    if not lines:
        # Same files, other bytes: deflate output depends on the zlib build; this one is pinned to ours.
        return f"  same contents, different compressed bytes (this zlib: {zlib.ZLIB_RUNTIME_VERSION})"
    return "\n".join(lines)


def check(wheel: Path | None) -> int:
    """0 when the committed zip equals a fresh build byte for byte, else 1 with what changed."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / OUTPUT.name
        build(fresh, wheel)
        if not OUTPUT.is_file():
            print(f"{OUTPUT} is missing: run `make lambda-zip` and commit it", file=sys.stderr)
            return 1
        if OUTPUT.read_bytes() == fresh.read_bytes():
            print(f"{OUTPUT.relative_to(LAMBDA_DIR.parent)} is up to date ({OUTPUT.stat().st_size} bytes)")
            return 0
        print(
            f"{OUTPUT} is stale: run `make lambda-zip` and commit it\n{describe_difference(OUTPUT, fresh)}",
            file=sys.stderr,
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare the committed zip with a fresh build")
    parser.add_argument("--wheel", type=Path, help=f"use this {REDIS_WHEEL} instead of pip download")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.wheel)
    build(OUTPUT, args.wheel)
    digest = hashlib.sha256(OUTPUT.read_bytes()).hexdigest()
    with zipfile.ZipFile(OUTPUT) as archive:
        entries = len(archive.infolist())
    size = OUTPUT.stat().st_size
    print(f"wrote {OUTPUT.relative_to(LAMBDA_DIR.parent)}: {size} bytes, {entries} files, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
