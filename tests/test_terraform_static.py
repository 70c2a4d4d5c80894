"""The Terraform module without AWS: formatting, init + validate of the root, modules/scaler and every example, and
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
EXAMPLES = ("complete", "existing-redis", "existing-services", "minimal", "rabbitmq", "sqs")
SUBMODULES = ("modules/scaler",)
# Each module with its validation rules' expect_failures runs and the fewest `terraform test` runs it has.
MODULES = {".": ("tests/validations.tftest.hcl", 100), "modules/scaler": ("tests/validations.tftest.hcl", 55)}
LAMBDA_ZIP = Path("lambda/dist/celery-autoscaler-lambda.zip")


@pytest.fixture(scope="module")
def tf_env() -> dict[str, str]:
    """Environment for terraform: no checkpoint calls, no colour, the CLI config conftest chose."""
    return {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0", "NO_COLOR": "1"}


@pytest.fixture(scope="module")
def module_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's and submodules' .tf files and terraform tests, the committed Lambda zip and the examples, copied."""
    dest = tmp_path_factory.mktemp("module")
    for module in MODULES:
        (dest / module / "tests").mkdir(parents=True, exist_ok=True)
        for tf in (ROOT / module).glob("*.tf"):
            shutil.copy2(tf, dest / module / tf.name)
        for test in (ROOT / module).glob("tests/*.tftest.hcl"):
            shutil.copy2(test, dest / module / "tests" / test.name)
        if (ROOT / module / "queries").is_dir():  # the dashboard's Logs Insights queries, read with file()
            shutil.copytree(ROOT / module / "queries", dest / module / "queries")
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


@pytest.mark.parametrize("where", [".", *SUBMODULES, *(f"examples/{e}" for e in EXAMPLES)])
def test_init_and_validate(module_copy: Path, tf_env: dict[str, str], where: str) -> None:
    directory = module_copy / where
    env = _init(directory, tf_env)
    result = _terraform(["validate", "-no-color"], directory, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The configuration is valid" in result.stdout


@pytest.mark.parametrize("module", MODULES)
def test_every_validation_rule_has_an_expect_failures_run(module: str) -> None:
    """Each variable gets at least as many failing runs as it has validation blocks."""
    rules: Counter[str] = Counter()
    current = None
    for line in (ROOT / module / "variables.tf").read_text().splitlines():
        if match := re.match(r'^variable "([a-z_]+)"', line):
            current = match.group(1)
        elif line.strip() == "validation {":
            assert current is not None
            rules[current] += 1
    tests = (ROOT / module / MODULES[module][0]).read_text()
    runs = Counter(re.findall(r"expect_failures = \[var\.([a-z_]+)\]", tests))
    missing = {name: (count, runs[name]) for name, count in rules.items() if runs[name] < count}
    assert not missing, f"variable: (validation blocks, expect_failures runs) {missing}"
    assert sum(rules.values()) >= 40


def _scaling_type(variables_tf: Path) -> str:
    """The source of the ``scaling = optional(object({...}), {})`` attribute type, whitespace collapsed."""
    match = re.search(r"\n\s*scaling\s*=\s*(optional\(object\(\{.*?\}\), \{\}\))", variables_tf.read_text(), re.S)
    assert match, f"no scaling object in {variables_tf}"
    return " ".join(match.group(1).split())


def test_submodule_pools_take_the_root_scaling_settings_unchanged() -> None:
    """modules/scaler's pools.NAME.scaling has the same attributes and defaults as worker_pools.NAME.scaling."""
    root, submodule = _scaling_type(ROOT / "variables.tf"), _scaling_type(ROOT / "modules/scaler/variables.tf")
    assert "min_workers = optional(number, 0)" in root
    assert submodule == root


@pytest.mark.parametrize("module", MODULES)
def test_terraform_test(module_copy: Path, tf_env: dict[str, str], module: str) -> None:
    """Each module's test files in one ``terraform test``: shape assertions and one failing run per rule."""
    env = _init(module_copy / module, tf_env)
    result = _terraform(["test", "-no-color"], module_copy / module, env, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(r"Success! (\d+) passed, 0 failed", output)
    assert summary, output
    print(f"terraform test of {module}: {summary.group(0)}")
    assert int(summary.group(1)) >= MODULES[module][1]


def _cron_locals(main_tf: Path) -> list[str]:
    """The cron_values block and the cron_fields and cron_pattern lines of a main.tf, whitespace collapsed."""
    text = main_tf.read_text()
    found = [
        re.search(r"cron_values\s*=\s*\{.*?\}", text, re.S),
        *(re.search(rf"^\s*{n}\s*=.*$", text, re.M) for n in ("cron_fields", "cron_pattern")),
    ]
    assert all(found), f"cron locals missing in {main_tf}"
    return [" ".join(m.group(0).split()) for m in found if m]


def test_submodule_checks_schedules_with_the_root_cron_pattern_and_time_zones() -> None:
    """modules/scaler validates schedules with the same cron pattern and time zone list as the root."""
    assert _cron_locals(ROOT / "modules/scaler/main.tf") == _cron_locals(ROOT / "main.tf")
    assert (ROOT / "modules/scaler/time_zones.tf").read_text() == (ROOT / "time_zones.tf").read_text()
