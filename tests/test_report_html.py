"""The demo's report.html and timeline.png, built from a synthetic run's event log (no 7-minute demo):
report.html is self-contained, and headless Chromium (Debian's chromium + chromium-driver, driven over
WebDriver) renders every pool, shows a decision's reason on hover and raises no script error."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import ROOT
from moto_aws import free_port
from PIL import Image
from waiting import wait_until

sys.path.insert(0, str(ROOT / "examples/local"))
from demo.html_report import COLOURS, render, write_report
from demo.report import build_summary, plot_timeline, timeline_figure

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1200,1400",
]
POOLS = ["default", "reports"]
MAX_WORKERS = {"default": 6, "reports": 3}
PINNED = "burst: 250 waiting, 2 in flight -> 6 (at max_workers; 126 wanted)"


def synthetic_run() -> list[dict[str, Any]]:
    """The events a run writes (runner, load generator, one 'tick' per pool per tick): a burst that pins
    'default' at max_workers, 'reports' steady at 1, then both back to 0."""
    events: list[dict[str, Any]] = [
        {"t": 0.0, "kind": "run_started"},
        {"t": 0.5, "kind": "load_phase", "phase": "burst"},
    ]
    desired = dict.fromkeys(POOLS, 0)
    for step in range(1, 21):
        t = step * 15.0
        if step == 8:
            events.append({"t": t - 1, "kind": "load_phase", "phase": "trickle"})
        for pool in POOLS:
            waiting = max(0, 250 - 30 * step) if pool == "default" else (2 if step < 12 else 0)
            wanted = {"default": 6 if waiting else 0, "reports": 1 if waiting else 0}[pool]
            before, desired[pool] = desired[pool], wanted
            if pool == "default" and waiting:
                reason = PINNED.replace("250 waiting", f"{waiting} waiting")
            else:
                reason = f"steady: {waiting} waiting, 0 in flight -> {wanted}"
            events.append(
                {
                    "t": t,
                    "kind": "tick",
                    "pool": pool,
                    "current_desired": before,
                    "running": before,
                    "waiting": waiting,
                    "in_flight": min(waiting, 2 * before),
                    "oldest_age_s": 3.0 * step if waiting else None,
                    "desired": wanted,
                    "reason": reason,
                    "acted": wanted != before,
                    "error": None,
                    "worker_seconds": before * 15.0,
                    "estimated_cost_usd": before * 15.0 / 3600 * 0.0123425,
                }
            )
            events.append({"t": t + 5, "kind": "runner_running", "pool": pool, "running": wanted, "desired": wanted})
    return events


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    events = synthetic_run()
    records = {"sent": {"a": {"sent_at": 0.0}}, "done": {"a": {"started_at": 2.0}}, "runs": {"a": 1}}
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(events, build_summary(records, events, POOLS), POOLS, MAX_WORKERS, path)
    return path


def test_the_report_is_self_contained_and_carries_every_decision(report: Path) -> None:
    page = report.read_text()
    assert not re.search(r"\b(src|href)\s*=", page), "nothing is loaded from anywhere"
    assert not re.search(r"<link|@import|url\(", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}, "only the SVG namespace"
    assert page.count('class="decision"') == 40, "one dot per pool per tick"
    assert page.count("(at max_workers; 126 wanted)") >= 1
    cost = re.search(r"<td>default</td><td>(\d+)</td><td>[\d.]+</td><td>([\d.]+)</td>", page)
    assert cost is not None
    ticks = [e for e in synthetic_run() if e["kind"] == "tick" and e["pool"] == "default"]
    assert int(cost.group(1)) == sum(e["worker_seconds"] for e in ticks)
    assert "<td>tasks_lost</td><td>0</td>" in page


def test_a_reason_is_escaped_not_markup() -> None:
    events = [{"t": 15.0, "kind": "tick", "pool": "p", "desired": 1, "current_desired": 0, "reason": "<b>x</b>"}]
    page = render(events, {}, ["p"], {})
    assert 'data-reason="&lt;b&gt;x&lt;/b&gt;"' in page


def browser_paths() -> tuple[str, str]:
    """Chromium and its driver from Debian's packages, installed with apt-get when absent (said as a warning)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if found[0] and found[1]:
        return found[0], found[1]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium/chromedriver are absent and cannot be installed here (needs root and apt-get)")
    warnings.warn("chromium/chromedriver absent: installing the Debian packages chromium chromium-driver", stacklevel=1)
    install = subprocess.run(
        [
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=600",
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if install.returncode != 0 or not (found[0] and found[1]):
        pytest.skip(f"apt-get install chromium chromium-driver failed: {install.stderr.strip()[-300:]}")
    return found[0] or "", found[1] or ""


@dataclass
class Browser:
    """A W3C WebDriver session on chromedriver, spoken with plain HTTP."""

    url: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.request(method, f"{self.url}{path}", json=body, timeout=120)
        assert response.status_code == 200, response.text[:500]
        return response.json()["value"]

    def run(self, script: str) -> Any:
        return self.call("POST", "/execute/sync", {"script": script, "args": []})

    def find(self, css: str) -> str:
        return str(self.call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT])

    def shot(self, element: str | None = None) -> Image.Image:
        path = f"/element/{element}/screenshot" if element else "/screenshot"
        return Image.open(io.BytesIO(base64.b64decode(self.call("GET", path)))).convert("RGB")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium, chromedriver = browser_paths()
    port = free_port()
    driver = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base), timeout=60, what="chromedriver to answer /status")
        profile = tmp_path_factory.mktemp("chromium-profile")
        options = {"binary": chromium, "args": [*FLAGS, f"--user-data-dir={profile}"]}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
        created = requests.post(f"{base}/session", json={"capabilities": {"alwaysMatch": capabilities}}, timeout=180)
        assert created.status_code == 200, created.text[:500]
        session = Browser(f"{base}/session/{created.json()['value']['sessionId']}")
        yield session
        requests.delete(session.url, timeout=60)
    finally:
        driver.terminate()
        driver.wait(timeout=30)


def _ready(base: str) -> bool:
    try:
        return bool(requests.get(f"{base}/status", timeout=5).json()["value"]["ready"])
    except requests.RequestException:
        return False


def _pixels_like(image: Image.Image, hex_colour: str, tolerance: int = 40) -> int:
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(np.asarray(image, dtype=int) - target) <= tolerance).all(axis=2).sum())


def test_chromium_renders_every_pool_shows_reasons_on_hover_and_no_script_error(
    report: Path, browser: Browser, tmp_path: Path
) -> None:
    browser.call("POST", "/url", {"url": report.as_uri()})
    wait_until(lambda: browser.run("return window.reportReady === true"), timeout=60, what="the report's script")
    assert browser.run("return window.reportErrors") == []
    logged = browser.call("POST", "/se/log", {"type": "browser"})
    assert [entry["message"] for entry in logged if entry["level"] == "SEVERE"] == []

    page = browser.shot()
    page.save(tmp_path / "report.png")
    assert page.size[0] >= 1000
    for pool in POOLS:
        section = browser.find(f'section[data-pool="{pool}"]')
        assert browser.call("GET", f"/element/{section}/displayed")
        assert browser.call("GET", f"/element/{section}/text").startswith(f"pool {pool}")
        picture = browser.shot(section)
        picture.save(tmp_path / f"report-{pool}.png")
        # The pool's own picture shows its series in their colours: waiting area, desired line and dots, running.
        assert _pixels_like(picture, COLOURS["waiting"], 12) > 500, pool
        assert _pixels_like(picture, COLOURS["desired"]) > 200, pool
        assert _pixels_like(picture, COLOURS["running"]) > 30, pool

    tip = browser.find("#tip")
    assert not browser.call("GET", f"/element/{tip}/displayed")
    acted = browser.find('section[data-pool="default"] .decision[data-acted="true"]')
    move = {"type": "pointerMove", "duration": 0, "origin": {ELEMENT: acted}, "x": 0, "y": 0}
    pointer = {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [move]}
    browser.call("POST", "/actions", {"actions": [pointer]})
    wait_until(lambda: browser.call("GET", f"/element/{tip}/displayed"), timeout=30, what="the tooltip")
    text = browser.call("GET", f"/element/{tip}/text")
    assert "0 -> 6 (acted)" in text
    assert "(at max_workers; 126 wanted)" in text
    assert _pixels_like(browser.shot(tip), "#fffbe6", 6) > 200, "the tooltip is drawn, not just in the DOM"


def test_timeline_png_draws_max_line_colours_legend_age_and_summary(tmp_path: Path) -> None:
    events = synthetic_run()
    summary = {"wait_p95_s": 2.0, "tasks_lost": 0, "worker_seconds": 1234.5, "tasks_completed": 1, "tasks_sent": 1}
    plot_timeline(events, POOLS, tmp_path / "timeline.png", MAX_WORKERS, summary)
    assert Image.open(tmp_path / "timeline.png").size[0] > 1000
    fig = timeline_figure(events, POOLS, MAX_WORKERS, summary)
    title = fig.get_suptitle()
    assert "wait p95 2.0 s" in title
    assert "tasks lost 0" in title
    assert "worker-seconds 1234.5" in title
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "max_workers (6)" in labels
    assert "shaded: trickle phase of the load" in labels
    assert "scale out the scaler acted on" in labels
    assert "oldest waiting task's age" in labels
    colours = {ax.get_ylabel(): ax.yaxis.label.get_color() for ax in fig.axes}
    assert colours == {"tasks in queue": "#3182bd", "workers": "#d62728", "oldest task age (s)": "#6a51a3"}
    max_lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_label().startswith("max_workers")]
    assert [line.get_ydata()[0] for line in max_lines] == [6, 3]
