#!/usr/bin/env python3
"""Build the scaler's Lambda zip byte for byte reproducibly, so the committed zip can be checked in CI.

The Terraform module deploys ``lambda/dist/celery-autoscaler-lambda.zip`` with ``source_code_hash``
taken from the file: any byte that changes without a code change would make every ``terraform plan``
show a diff, and any code change that is not rebuilt would deploy old code. So the zip holds only what
the Lambda runs (the ``celery_autoscaler`` package without the simulator, demo, CLI and worker helper,
plus redis-py and tzdata from pinned, hash-checked wheels) with sorted entries, a fixed timestamp, fixed modes and
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

# Wheels vendored into the zip, with the sha256 of each PyPI file: a different file under the same
# name must never reach the Lambda. tzdata because the Lambda's Amazon Linux 2023 image may lack the
# system time zone database, and zoneinfo falls back to it for the schedules' named time zones.
PINNED_WHEELS = {
    "redis-8.1.0-py3-none-any.whl": "a4fe1aac3d3b3cc791d4b3d5931c5a956045dc951ee74d1c913ee3ac4d2ee9fb",
    "tzdata-2026.6-py2.py3-none-any.whl": "0a10eec6e13ef16b627fabed9a5f2ba61a62b1c67f327305f4e7e412a70b4aec",
}

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


def pinned_wheel(filename: str, wheel_dir: Path) -> bytes:
    """One pinned wheel's bytes, from ``wheel_dir`` (``pip download`` fills it when missing); hash-checked."""
    wheel = wheel_dir / filename
    if not wheel.is_file():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        name, version = filename.split("-")[:2]
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*pip, "--dest", str(wheel_dir), f"{name}=={version}"], check=True)
    data = wheel.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != PINNED_WHEELS[filename]:
        raise SystemExit(f"{wheel}: sha256 {digest} is not the pinned {PINNED_WHEELS[filename]}")
    return data


def wheel_files(wheel_bytes: bytes) -> dict[str, bytes]:
    """Every file of a wheel: its package and its dist-info (licence, version metadata)."""
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
        return {info.filename: wheel.read(info) for info in wheel.infolist() if not info.is_dir()}


def build(destination: Path, wheel_dir: Path = WHEEL_CACHE) -> None:
    """Write the zip to ``destination``: entries sorted by name, every header field fixed."""
    files = package_files()
    for filename in PINNED_WHEELS:
        files |= wheel_files(pinned_wheel(filename, wheel_dir))
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


def check(wheel_dir: Path) -> int:
    """0 when the committed zip equals a fresh build byte for byte, else 1 with what changed."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / OUTPUT.name
        build(fresh, wheel_dir)
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
    parser.add_argument(
        "--wheel-dir", type=Path, default=WHEEL_CACHE, help="where the pinned wheels are (or are downloaded to)"
    )
    args = parser.parse_args(argv)
    if args.check:
        return check(args.wheel_dir)
    build(OUTPUT, args.wheel_dir)
    digest = hashlib.sha256(OUTPUT.read_bytes()).hexdigest()
    with zipfile.ZipFile(OUTPUT) as archive:
        entries = len(archive.infolist())
    size = OUTPUT.stat().st_size
    print(f"wrote {OUTPUT.relative_to(LAMBDA_DIR.parent)}: {size} bytes, {entries} files, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
