"""The ``kapow`` command's output read by a pipe that closes early (``kapow dlq list | head``)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import kapow.cli.dlq as dlq
from kapow.cli import main

def flood(args):
    for i in range(200_000):
        print(f"{i:>10}  a parked record's line, long enough to fill the pipe")
    return 0

dlq.cmd_dlq = flood
raise SystemExit(main(["dlq", "list"]))
"""


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    with subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(100)
        proc.stdout.close()  # as `head` does once it has its lines
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
