"""Progress of long runs on standard error: shown on a terminal or with --progress, never on stdout.

The reporter is driven with a fixed clock to check what it says (rate, time
left, how often); `liaison hash` runs as a real subprocess, once with a
pseudo-terminal as its standard error and once with pipes.
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from liaison.cli.progress import EVERY_LINES_S, Progress
from liaison.patterns import write_series
from tests.support import REPO, liaison


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_says_done_total_rate_and_time_left() -> None:
    clock = Clock()
    progress = Progress("hashing", "files", enabled=True, stream=io.StringIO(), clock=clock)

    clock.now += 10
    assert progress.line(20, 80) == "hashing: 20/80 files (25%), 2.0 files/s, ETA 30s"
    clock.now += 290
    assert progress.line(600, 1000) == "hashing: 600/1,000 files (60%), 2.0 files/s, ETA 3m20s"
    clock.now += 200
    assert progress.line(1000, 1000) == "hashing: 1,000/1,000 files (100%), 2.0 files/s, took 8m20s"


def test_without_a_terminal_a_line_every_few_seconds_and_always_the_last() -> None:
    clock = Clock()
    out = io.StringIO()
    progress = Progress("asking", "hashes", enabled=True, stream=out, clock=clock)

    for done in range(1, 101):
        clock.now += EVERY_LINES_S / 10  # ten updates per interval
        progress.update(done, 100)
    progress.close()

    lines = out.getvalue().splitlines()
    assert lines[0].startswith("asking: 1/100 hashes")
    assert lines[-1].startswith("asking: 100/100 hashes (100%)")
    assert len(lines) == 11  # the first, one per interval after it, and the last
    assert "\r" not in out.getvalue()


def test_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    progress = Progress("hashing", "files", enabled=False, stream=out)

    progress.update(1, 2)
    progress.note("hashed 2 file(s)")
    progress.update(2, 2)
    progress.close()

    assert out.getvalue() == ""


def test_hash_progress_only_when_asked_and_never_on_stdout(tmp_path: Path) -> None:
    write_series(tmp_path / "photos", seed=3)

    quiet = liaison("hash", "--json", tmp_path / "photos", cwd=tmp_path)
    asked = liaison("hash", "--json", "--progress", tmp_path / "photos", cwd=tmp_path)

    assert quiet.returncode == asked.returncode == 0, asked.stderr
    assert quiet.stderr == ""  # a pipe is no terminal: silent unless asked
    assert json.loads(asked.stdout) == json.loads(quiet.stdout)
    last = asked.stderr.splitlines()[-1]
    n = len(json.loads(asked.stdout))
    assert last.startswith(f"hashing: {n}/{n} files (100%), "), last
    assert "files/s, took " in last


def test_hash_redraws_one_line_on_a_terminal(tmp_path: Path) -> None:
    write_series(tmp_path / "photos", seed=4)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "liaison", "hash", "--json", str(tmp_path / "photos")],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)

    assert done.returncode == 0
    text = seen.decode()
    n = len(json.loads(done.stdout))
    assert f"\rhashing: {n}/{n} files (100%)" in text
    assert text.rstrip("\r\n").count("\n") == 0  # one line, redrawn in place
