"""Runs the command-line pipeline in a separate process and reports on it when polled.

Qt-free: the Slicer widget polls ``BackgroundRun.poll()`` from a QTimer, so the UI stays
responsive, Cancel can kill the process, and GPU memory is released when it ends. torch is
imported only in the child process.

In Slicer, ``PythonSlicer`` is CTK's AppLauncher: it sets up the environment and runs the
real interpreter as its own child. Killing the launcher alone would leave the computation
running, so each run gets a process group of its own (a new session on POSIX, a new
process group on Windows) and Cancel kills the whole tree before the work folder goes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger("SegHiResGradCAM")
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding SegHiResGradCAMLib
TREE_GONE_SECONDS = 10.0  # how long Cancel waits for the killed processes to disappear


@dataclass
class Status:
    state: str  # "running", "finished", "failed" or "cancelled"
    fraction: float
    message: str


def python_executable() -> str:
    """The interpreter for child processes: Slicer's PythonSlicer launcher where it is on the
    PATH (Slicer puts it there, also inside a macOS app bundle); outside the application
    (slicer-core in a plain Python), this interpreter. Inside the application
    sys.executable is Slicer itself, so a missing launcher is an error, as in
    slicer.util.executePythonModule."""
    launcher = shutil.which("PythonSlicer")
    if launcher:
        return launcher
    try:
        from slicer import app  # noqa: F401  (present only inside the Slicer application)
    except ImportError:
        return sys.executable
    raise RuntimeError(
        "PythonSlicer was not found on the PATH, so the network cannot run in the background. Start Slicer "
        "with its own launcher (Slicer or Slicer.exe) rather than the bare application binary, or reinstall Slicer."
    )


def cli_command(python: str | None, arguments: list[str]) -> list[str]:
    """The package's own entry point, so that the command's exit code is the process's."""
    return [python or python_executable(), "-m", "SegHiResGradCAMLib.cli", *arguments]


def start_process(command: list[str], work_dir: Path) -> subprocess.Popen:
    """Starts ``command`` in a process group of its own, without a console window on
    Windows, with this package importable; stdout and stderr are piped as text."""
    environment = dict(os.environ)
    environment["PYTHONUTF8"] = "1"  # the child writes UTF-8 whatever the locale; read as such below
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH")]))
    options = {}
    if os.name == "nt":
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    else:
        options["start_new_session"] = True
    return subprocess.Popen(
        command,
        cwd=work_dir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        **options,
    )


def kill_process_tree(process: subprocess.Popen) -> None:
    """Kills the process and every process it started, and waits until they are gone."""
    if os.name == "nt":
        # taskkill /T ends the whole tree; the launcher's children are not in a job we own.
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(process.pid)],
            capture_output=True,
            creationflags=subprocess.CREATE_NO_WINDOW,
            check=False,
        )
        process.wait()
        return
    group = process.pid  # start_new_session made the child the leader of its own group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + TREE_GONE_SECONDS
    while _group_alive(group):
        if time.monotonic() > deadline:
            LOGGER.warning(
                "Processes of the cancelled run (group %s) did not end within %s s.", group, TREE_GONE_SECONDS
            )
            return
        time.sleep(0.02)


def _group_alive(group: int) -> bool:
    """Whether a live (not zombie) process of the process group is left. Linux: read from
    /proc, since an orphaned zombie may wait long for its reaper; elsewhere: signal 0."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while being read
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state not in ("Z", "X"):
            return True
    return False


@contextlib.contextmanager
def new_work_dir(prefix: str):
    """A new temporary folder for a background process, removed again when starting the
    process in it fails."""
    work_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work_dir
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise


class BackgroundProcess:
    """A child process whose stdout and stderr lines are collected by reader threads and
    kept as a log; lines go to Python logging too, so a failed run can be reported.

    The reader threads only queue lines (they never stop on a bad byte: output is decoded
    as UTF-8 with replacement, so the child can never block on a full pipe); the lines are
    logged and handed out on the thread that polls, Slicer's main thread."""

    def __init__(self, command: list[str], work_dir: Path, log_prefix: str):
        self.work_dir = Path(work_dir)
        self.log: list[str] = []  # progress messages and stderr, in order of arrival
        self._arrived: queue.Queue[tuple[str, str]] = queue.Queue()  # (stream, line) from the readers
        self._stdout: list[str] = []
        self._errors: list[str] = []
        self._log_prefix = log_prefix
        LOGGER.info("%s: %s", log_prefix, " ".join(command))
        self.process = start_process(command, self.work_dir)
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, "stdout", self._arrived), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "stderr", self._arrived), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, name: str, arrived: queue.Queue) -> None:
        for line in stream:
            arrived.put((name, line.rstrip("\n")))

    def _take_arrived(self) -> None:
        while True:
            try:
                name, line = self._arrived.get_nowait()
            except queue.Empty:
                return
            if name == "stderr":
                self._errors.append(line)
                self.add_to_log(line)
            else:
                self._stdout.append(line)

    def add_to_log(self, line: str) -> None:
        self.log.append(line)
        LOGGER.info("%s: %s", self._log_prefix, line)

    def stdout_lines(self) -> list[str]:
        self._take_arrived()
        lines, self._stdout = self._stdout, []
        return lines

    def exit_code(self) -> int | None:
        """None while running; once ended, after every line has been read."""
        code = self.process.poll()
        if code is not None:
            for reader in self._readers:
                reader.join(timeout=5)
            self._take_arrived()
        return code

    def error_message(self) -> str:
        """The process's own message: its last error line, without the program prefix."""
        lines = [line for line in self._errors if line.strip()]
        if not lines:
            return f"The computation stopped with exit code {self.process.returncode}."
        last = lines[-1]
        return last.split("error: ", 1)[1] if "error: " in last else last

    def kill(self) -> None:
        if self.process.poll() is None:
            kill_process_tree(self.process)
        else:
            self.process.wait()


class BackgroundRun:
    """``python -m SegHiResGradCAMLib.cli ARGUMENTS --progress json`` in ``work_dir``."""

    def __init__(self, arguments: list[str], work_dir: Path, python: str | None = None):
        self.work_dir = Path(work_dir)
        self._status = Status("running", 0.0, "starting")
        self._child = BackgroundProcess(
            cli_command(python, [*arguments, "--progress", "json"]), self.work_dir, "explain"
        )

    @property
    def log(self) -> list[str]:
        return self._child.log

    @property
    def pid(self) -> int:
        return self._child.process.pid

    def _drain(self) -> None:
        for line in self._child.stdout_lines():
            try:
                update = json.loads(line)
                self._status = Status("running", float(update["fraction"]), str(update["message"]))
            except (ValueError, KeyError, TypeError):
                self._child.add_to_log(line)  # not a progress line
                continue
            if not self._child.log or self._child.log[-1] != self._status.message:
                self._child.add_to_log(self._status.message)

    def poll(self) -> Status:
        if self._status.state != "running":
            return self._status
        self._drain()
        code = self._child.exit_code()
        if code is not None:
            self._drain()
            if code == 0:
                self._status = Status("finished", 1.0, "done")
            else:
                message = self._child.error_message()
                self._child.add_to_log(f"exit code {code}")
                self._status = Status("failed", self._status.fraction, message)
        return self._status

    def wait(self, timeout: float | None = None) -> Status:
        self._child.process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        """Kills the whole process tree (the GPU memory goes with it), then removes the
        working folder: nothing is left behind."""
        if self._status.state == "running":
            self._child.kill()
            self._status = Status("cancelled", self._status.fraction, "cancelled")
        self.remove_files()

    def remove_files(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


class BackgroundQuery:
    """A short command whose last stdout line is JSON (``inspect --json``), run in the
    background; ``poll()`` returns None while it runs, then the parsed JSON, or raises
    RuntimeError with the command's own message."""

    def __init__(self, arguments: list[str], work_dir: Path, python: str | None = None):
        self._lines: list[str] = []
        self._child = BackgroundProcess(cli_command(python, arguments), Path(work_dir), "inspect")

    def poll(self):
        self._lines += self._child.stdout_lines()
        code = self._child.exit_code()
        if code is None:
            return None
        self._lines += self._child.stdout_lines()
        if code != 0:
            raise RuntimeError(self._child.error_message())
        try:
            return json.loads(self._lines[-1])
        except (IndexError, ValueError):
            raise RuntimeError("The model inspection printed no result.") from None

    def cancel(self) -> None:
        self._child.kill()
