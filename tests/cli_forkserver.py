"""Runs the edgekd CLI in forked child processes, one per request, for tests that run it hundreds of times.

Each run is a real process: its own exit code, stdout and stderr (files), working folder, address-space limit
and CPU-time limit (killed past it), and its peak memory and CPU time are measured. The bound is CPU time,
not wall-clock time, so that a busy machine (other processes taking the cores) does not fail a refusal that
is quick in work; a generous wall-clock ceiling remains only against a child that hangs without computing.
Forking from this server, which has imported edgekd once and never computed anything (no thread pool to
break), saves each run the seconds that importing torch costs.

Protocol: one JSON request per line on stdin, {"args": [...], "cwd": ..., "timeout_s": ..., "memory_bytes":
..., "cpu_seconds": ...}; one JSON reply per line on stdout, {"exit": ..., "seconds": ..., "cpu_seconds": ...,
"peak_rss_bytes": ..., "timed_out": ..., "hung": ..., "stdout": ..., "stderr": ...}. The first line written
is {"ready": true, "rss_bytes": ...}.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

OUTPUT_LIMIT = 100_000  # characters of stdout/stderr sent back


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(
    args: list[str], cwd: str, memory_bytes: int, cpu_seconds: int, stdout_path: str, stderr_path: str
) -> None:
    """Never returns: runs `edgekd *args` and leaves with its exit code."""
    code = 1
    try:
        os.chdir(cwd)
        for fd, path in ((1, stdout_path), (2, stderr_path)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        os.setpgid(0, 0)
        # A cap on memory *added* to what was inherited: the address space already mapped plus the limit.
        with open("/proc/self/status") as status:
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_bytes, mapped + memory_bytes))
        # SIGXCPU ends the child once it has computed for this long, however slowly the machine ran it.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        from edgekd.cli import main

        main(args, prog_name="edgekd")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout_s: float) -> tuple[int, resource.struct_rusage, bool]:
    deadline = time.monotonic() + timeout_s
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage, False
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return status, usage, True
        time.sleep(0.005)


def _read(path: str) -> str:
    with open(path, errors="replace") as file:
        return file.read(OUTPUT_LIMIT)


def run(args: list[str], cwd: str, timeout_s: float, memory_bytes: int, cpu_seconds: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        stdout_path, stderr_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(args, cwd, memory_bytes, cpu_seconds, stdout_path, stderr_path)
        status, usage, hung = _wait(pid, timeout_s)
        out_of_cpu = os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL)
        return {
            "exit": os.waitstatus_to_exitcode(status),
            "seconds": time.monotonic() - started,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "timed_out": hung or out_of_cpu,
            "hung": hung,
            "stdout": _read(stdout_path),
            "stderr": _read(stderr_path),
        }


def serve() -> None:
    import edgekd.cli
    import edgekd.pipeline
    import edgekd.recipe  # noqa: F401

    print(json.dumps({"ready": True, "rss_bytes": _rss_bytes()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(run(**request)), flush=True)


class CliProcesses:
    """The client side: starts this file as a server and runs `edgekd *args` in a fresh child per call."""

    def __init__(self, cpu_seconds: int = 20, timeout_s: float = 900.0, memory_bytes: int = 3 << 30) -> None:
        import subprocess

        self.cpu_seconds, self.timeout_s, self.memory_bytes = cpu_seconds, timeout_s, memory_bytes
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.rss_bytes = self._reply()["rss_bytes"]

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the edgekd fork server died")
        return json.loads(line)

    def run(self, args: list[str], cwd: str | os.PathLike) -> dict:
        """Exit code, seconds, CPU seconds, peak RSS (bytes, inherited pages included), timed_out (out of CPU
        time, or hung past the wall-clock ceiling), stdout and stderr."""
        request = {
            "args": args,
            "cwd": str(cwd),
            "timeout_s": self.timeout_s,
            "memory_bytes": self.memory_bytes,
            "cpu_seconds": self.cpu_seconds,
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    serve()
