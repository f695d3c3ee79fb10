"""A serving process's own log events skip the stderr capture pipe (liaison/logs.py).

Python's events are JSON already: read back from the pipe, parsed and written
again, they cost a gateway or node twice for every line. They go straight to the
real stderr; the pipe is only for what is written below Python (gRPC's C core).
Each test runs in a fresh interpreter, since the capture takes over fd 2.
"""

from __future__ import annotations

import json

from tests.support import captured


def test_python_events_do_not_pass_through_the_pipe() -> None:
    # prepare: the pipe's router refuses JSON lines (what Python's events are), so an
    # event sent through the pipe would break the capture and say so
    script = """
        routed = logs.route_line

        def route_line(raw):
            if raw.startswith(b"{"):
                raise RuntimeError("a Python event came through the pipe")
            return routed(raw)

        logs.route_line = route_line
        logs.configure()
        logs.capture_native_stderr()
        log = logging.getLogger("liaison.gateway")
        for i in range(200):
            log.info("search", extra={"i": i, "outcome": {"ruritania": "answered"}})
        os.write(2, b"E1207 02:01:45.674901 11314 chttp2_transport.cc:1203] from below\\n")
        log.warning("after the native line", extra={"ünïcode": "✓"})
        print("done")
    """

    # execute
    run = captured(script)

    # assert: every event whole and JSON; the native line wrapped by the pipe, which never
    # saw a Python event (no "stderr capture failed")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == b"done\n"
    events = [json.loads(line) for line in run.stderr.splitlines()]
    assert not [e for e in events if e["msg"] == "stderr capture failed"]
    searches = [e for e in events if e["msg"] == "search"]
    assert [e["i"] for e in searches] == list(range(200))
    assert all(e["outcome"] == {"ruritania": "answered"} for e in searches)
    (native,) = [e for e in events if e["logger"] == "grpc"]
    assert native["msg"] == "from below"
    (last,) = [e for e in events if e["msg"] == "after the native line"]
    assert last["ünïcode"] == "✓" and last["level"] == "warning"


def test_events_go_to_stderr_as_before_when_nothing_is_captured() -> None:
    run = captured(
        """
        logs.configure()
        logging.getLogger("liaison.cli").info("plain", extra={"n": 1})
        """
    )

    assert run.returncode == 0, run.stderr
    (event,) = [json.loads(line) for line in run.stderr.splitlines()]
    assert (event["msg"], event["n"], event["logger"]) == ("plain", 1, "liaison.cli")


def test_timestamps_are_utc_with_milliseconds() -> None:
    run = captured(
        """
        import time
        logs.configure()
        logs.capture_native_stderr()
        log = logging.getLogger("liaison.node")
        for _ in range(3):
            log.info("tick")
            time.sleep(0.002)
        """
    )

    assert run.returncode == 0, run.stderr
    stamps = [json.loads(line)["ts"] for line in run.stderr.splitlines()]
    assert len(stamps) == 3
    for stamp in stamps:
        assert len(stamp) == len("2026-12-07T04:39:25.706Z") and stamp.endswith("Z")
        assert stamp[10] == "T" and stamp[19] == "."
    assert stamps == sorted(stamps)
