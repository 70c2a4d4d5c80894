"""The Terraform module without AWS: formatting, init + validate of the root and every example, and
``terraform test`` (plan/apply-level runs against a mocked aws provider, one run per validation rule).

Everything runs in a temporary copy with its own TF_DATA_DIR, so the working tree gets no
``.terraform`` directory or lock file. The provider comes from the offline mirror when there is one
(``TF_CLI_CONFIG_FILE``, set by conftest as by make), else from the registry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.terraform

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("complete", "existing-redis", "minimal")
LAMBDA_ZIP = Path("lambda/dist/celery-autoscaler-lambda.zip")


@pytest.fixture(scope="module")
def tf_env() -> dict[str, str]:
    """Environment for terraform: no checkpoint calls, no colour, the CLI config conftest chose."""
    return {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def module_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's files, its terraform tests, the committed Lambda zip and the examples, copied."""
    dest = tmp_path_factory.mktemp("module")
    for tf in ROOT.glob("*.tf"):
        shutil.copy2(tf, dest / tf.name)
    (dest / "tests").mkdir()
    for test in ROOT.glob("tests/*.tftest.hcl"):
        shutil.copy2(test, dest / "tests" / test.name)
    (dest / LAMBDA_ZIP).parent.mkdir(parents=True)
    shutil.copy2(ROOT / LAMBDA_ZIP, dest / LAMBDA_ZIP)
    for example in EXAMPLES:
        shutil.copytree(ROOT / "examples" / example, dest / "examples" / example)
    yield dest
    shutil.rmtree(dest, ignore_errors=True)


def _terraform(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["terraform", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _init(directory: Path, env: dict[str, str]) -> dict[str, str]:
    """``terraform init`` without a backend; returns the env whose TF_DATA_DIR holds the result."""
    env = {**env, "TF_DATA_DIR": str(directory / ".terraform-data")}
    result = _terraform(["init", "-backend=false", "-input=false"], directory, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return env


def test_fmt_check_recursive(tf_env: dict[str, str]) -> None:
    result = _terraform(["fmt", "-check", "-recursive", "-diff"], ROOT, tf_env)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("where", [".", *(f"examples/{e}" for e in EXAMPLES)])
def test_init_and_validate(module_copy: Path, tf_env: dict[str, str], where: str) -> None:
    directory = module_copy / where
    env = _init(directory, tf_env)
    result = _terraform(["validate", "-no-color"], directory, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The configuration is valid" in result.stdout


def test_every_validation_rule_has_an_expect_failures_run() -> None:
    """Each variable gets at least as many failing runs as it has validation blocks."""
    rules: Counter[str] = Counter()
    current = None
    for line in (ROOT / "variables.tf").read_text().splitlines():
        if match := re.match(r'^variable "([a-z_]+)"', line):
            current = match.group(1)
        elif line.strip() == "validation {":
            assert current is not None
            rules[current] += 1
    tests = (ROOT / "tests/validations.tftest.hcl").read_text()
    runs = Counter(re.findall(r"expect_failures = \[var\.([a-z_]+)\]", tests))
    missing = {name: (count, runs[name]) for name, count in rules.items() if runs[name] < count}
    assert not missing, f"variable: (validation blocks, expect_failures runs) {missing}"
    assert sum(rules.values()) >= 80


def test_terraform_test(module_copy: Path, tf_env: dict[str, str]) -> None:
    """Both test files in one ``terraform test``: shape assertions and one failing run per rule."""
    env = _init(module_copy, tf_env)
    result = _terraform(["test", "-no-color"], module_copy, env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(r"Success! (\d+) passed, 0 failed", output)
    assert summary, output
    print(f"terraform test: {summary.group(0)}")
    assert int(summary.group(1)) >= 100
