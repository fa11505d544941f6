"""Killing a real `kd` process at a named point (kd_pipeline/crashpoints.py) for crash tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STARTED: list[int] = []  # children of the zygote; any still alive at the end of the session are killed


def start_zygote() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "zygote.py")], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def start_paused(zygote, yaml_path: Path, point: str, stage: str, tmp: Path) -> int:
    """`kd run --stage <stage>` in a child process that stops at `point` and waits there to be killed."""
    flag = tmp / f"paused-{point.replace(':', '-')}"
    req = {"argv": ["kd", "run", str(yaml_path), "--stage", stage], "env": {"KD_PAUSE_AT": point, "KD_PAUSE_FILE": str(flag)}}
    zygote.stdin.write(json.dumps(req) + "\n")
    zygote.stdin.flush()
    pid = int(zygote.stdout.readline())
    STARTED.append(pid)
    deadline = time.monotonic() + 180
    while not flag.exists():
        if not alive(pid):
            pytest.fail(f"{stage} ended before reaching {point} (its stderr is in the pytest output)")
        if time.monotonic() > deadline:
            kill9(pid)
            pytest.fail(f"{stage} never reached {point}")
        time.sleep(0.02)
    assert int(flag.read_text()) == pid
    return pid


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid):  # reaped by the zygote
        assert time.monotonic() < deadline
        time.sleep(0.01)


def kill_leftovers() -> None:
    """A test that failed between start_paused and kill9 leaves its child asleep: end it."""
    for pid in STARTED:
        if alive(pid):
            kill9(pid)
