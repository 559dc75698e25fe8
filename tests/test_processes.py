"""`googlenet train --processes N`: what is refused before any process starts, and how the starter waits.

Training in several processes, Ctrl-C and a failing process are in tests/test_distributed.py."""

import subprocess
import sys
import time

import pytest

from googlenet import cli, processes


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_failure_stops_the_processes_still_running():
    sleeper = _python("import time; time.sleep(120)")
    started = time.monotonic()
    assert processes.wait_for([_python("import sys; sys.exit(3)"), sleeper], poll_s=0.05) == 3
    assert sleeper.returncode is not None and time.monotonic() - started < 60


def test_a_stopped_run_is_waited_for_not_stopped_again():
    # 130: stopped by Ctrl-C after saving. The slower process is still saving and stopping: leave it be.
    slower = _python("import time, sys; time.sleep(1); sys.exit(130)")
    assert processes.wait_for([_python("import sys; sys.exit(130)"), slower], poll_s=0.05) == 130
    assert slower.returncode == 130  # its own exit, not a SIGTERM's -15


def test_all_succeeding_is_success():
    assert processes.wait_for([_python("pass"), _python("pass")], poll_s=0.05) == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--processes", "3", "--batch-size", "8"], "batch_size 8 is not divisible by the 3 processes"),
        (["--processes", "0"], "processes must be >= 1"),
        (["--processes", "2", "--device", "cuda"], "on GPUs start one process per GPU"),
        (["--processes", str(processes.usable_cores() + 1)], "is more than the"),
    ],
)
def test_refused_with_one_line_before_any_process_starts(tmp_path, capsys, flags, message):
    batch = ["--batch-size", str(processes.usable_cores() + 1)] if "is more" in message else []
    code = cli.main(["train", "--out", str(tmp_path / "run"), *batch, *flags])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
