"""`edgekd build --nproc N`: the launcher of a data-parallel build, and how a training process's error reaches
the user as one line.

`edgekd build --nproc N` first checks in one process everything it can (pipeline.check_parallel_build), then
replaces itself (exec: the same pid, the checks' memory and any CUDA context released) by
`python -m edgekd.launch N build ...`, which runs torchrun's own launcher in this process
(torch.distributed.run: --standalone, N processes of `python -m edgekd build ...`). The processes are its
children, so a SIGKILL of the launcher still takes them with it (edgekd.train.dist.die_with_parent).

A process that stops on bad input (an EdgekdError) writes its message and exit code into the error file
torchrun gives each process (TORCHELASTIC_ERROR_FILE, in the format torchrun reads back) and, when this
launcher started it, prints nothing itself: the launcher prints the first such message once, as one line, in
place of torchrun's failure report, and exits with its code (2 for bad input). A process that crashed prints
its own traceback; the launcher then adds one line naming it and exits with 1.

Under a torchrun started by hand (several machines) the processes print their errors as in one process, and
torchrun's report shows the message instead of "To enable traceback see ...".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edgekd.console import print_error, print_interrupted
from edgekd.errors import EXIT_INTERRUPTED

# Set by this launcher for the processes it starts: it prints their errors, so they do not.
LAUNCHED_HERE = "EDGEKD_LAUNCHER"
# Where torchrun tells each process to write the error that stopped it.
ERROR_FILE = "TORCHELASTIC_ERROR_FILE"


# ------------------------------------------------------------------------------------ in a training process
def under_edgekd_launcher() -> bool:
    return os.environ.get(LAUNCHED_HERE) == "1"


def report_to_launcher(message: str, exit_code: int) -> bool:
    """In a process of a torchrun launch, record the error that stops it in torchrun's error file (nothing
    elsewhere). Returns whether edgekd's launcher prints it, so the process must not."""
    path = os.environ.get(ERROR_FILE)
    if not path or "LOCAL_RANK" not in os.environ:
        return False
    now = time.time()
    record = {"message": message, "timestamp": int(now), "edgekd": {"exit_code": exit_code, "time": now}}
    try:
        Path(path).write_text(json.dumps(record))
    except OSError:
        return False
    return under_edgekd_launcher()


# ------------------------------------------------------------------------------------------ the launcher
def launch(nproc: int, command: list[str]) -> int:
    """Run `python -m edgekd COMMAND` in `nproc` processes under torchrun's launcher; the exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ[LAUNCHED_HERE] = "1"
    if nproc > 1:  # what torchrun sets for several processes, without its banner on stderr
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    quiet_agent()
    args = torchrun.parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "edgekd", *command])
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        return report_failure(exc.failures, nproc)
    except SignalException as exc:  # the launcher itself was stopped (Ctrl-C, kill): its processes are too
        return interrupted(signal.Signals(exc.sigval).name)
    return 0


def quiet_agent() -> None:
    """torchrun's agent logs each failed or stopped process (each of its loggers has its own level): the one
    line this launcher prints says what the user needs."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def report_failure(failures: dict[int, Any], nproc: int) -> int:
    """One line for a failed launch (`failures`: torchrun's ProcessFailure by rank); returns the exit code.
    The first error a process reported wins; the others were stopped by the launcher or failed after it."""
    reported = [
        (failure.error_file_data["edgekd"]["time"], rank, failure)
        for rank, failure in failures.items()
        if isinstance(failure.error_file_data.get("edgekd"), dict)
    ]
    if reported:
        _, _, first = min(reported, key=lambda item: item[:2])
        print_error(first.message)
        return int(first.error_file_data["edgekd"]["exit_code"])
    if any(failure.exitcode == EXIT_INTERRUPTED for failure in failures.values()):
        return interrupted("SIGINT")
    rank, first = min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    how = f"signal {first.signal_name()}" if first.exitcode < 0 else f"exit code {first.exitcode}"
    print_error(f"training process {rank} of {nproc} failed ({how}); its output above says why")
    return 1


def interrupted(signal_name: str) -> int:
    print_interrupted(f"by {signal_name}")
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> None:
    """`python -m edgekd.launch N build recipe.yaml ...` (what `edgekd build --nproc N` execs)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = launch(int(args[0]), args[1:])
    except KeyboardInterrupt:  # before torchrun's agent took over Ctrl-C
        code = interrupted("SIGINT")
    sys.exit(code)


if __name__ == "__main__":
    main()
