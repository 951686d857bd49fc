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
LOG_LINES_KEPT = 1000


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


def start_process(command: list[str], work_dir: Path, stdin: bool = False) -> subprocess.Popen:
    """Starts ``command`` in a process group of its own, without a console window on
    Windows, with this package importable; stdout and stderr (and stdin, if asked) are
    piped as text."""
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
        stdin=subprocess.PIPE if stdin else None,
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

    def __init__(self, command: list[str], work_dir: Path, log_prefix: str, stdin: bool = False):
        self.work_dir = Path(work_dir)
        self.log: list[str] = []  # progress messages and stderr, in order of arrival
        self._arrived: queue.Queue[tuple[str, str]] = queue.Queue()  # (stream, line) from the readers
        self._stdout: list[str] = []
        self._errors: list[str] = []
        self._log_prefix = log_prefix
        LOGGER.info("%s: %s", log_prefix, " ".join(command))
        self.process = start_process(command, self.work_dir, stdin)
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
        if len(self.log) > 2 * LOG_LINES_KEPT:  # a long-lived process (the warm worker) keeps its recent lines
            del self.log[:-LOG_LINES_KEPT]
            del self._errors[:-LOG_LINES_KEPT]

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


def last_json_line(lines: list[str]):
    """A query's result: the JSON of the last line it printed."""
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError("The model inspection printed no result.") from None


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
        return last_json_line(self._lines)

    def cancel(self) -> None:
        self._child.kill()


CANCEL_GRACE_SECONDS = 5.0  # how long a cancelled question may take to stop before the worker is killed


class WarmWorker:
    """The warm worker process (``python -m SegHiResGradCAMLib.worker``), started on the
    first question and kept between questions: the network, the prepared CT and the logits
    stay loaded, so a second question about the same CT costs only its explanation. One
    question at a time. It ends on ``release()``, when this object's owner goes (its input
    pipe closes) or after ``idle_seconds`` without a question."""

    def __init__(self, python: str | None = None, idle_seconds: float | None = None):
        self._python, self._idle_seconds = python, idle_seconds
        self._child: BackgroundProcess | None = None
        self._next_id = 0
        self.generation = 0  # which worker process: a question asked of an earlier one has no answer coming
        self._inbox: dict[int, list[dict]] = {}  # messages of the questions still awaited, by question
        self.loaded = ""  # what the last finished question left loaded (the model's name), for the status

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self.alive else None

    def _start(self) -> None:
        self.release()
        arguments = ["--idle-seconds", str(self._idle_seconds)] if self._idle_seconds else []
        command = [self._python or python_executable(), "-m", "SegHiResGradCAMLib.worker", *arguments]
        # Each question runs in its own folder; the worker itself writes nothing.
        self._child = BackgroundProcess(command, Path(tempfile.gettempdir()), "worker", stdin=True)

    def start(self) -> None:
        """Starts the worker unless it runs (it imports its libraries while the caller goes on)."""
        if not self.alive:
            self._start()

    def submit(self, arguments: list[str], work_dir: Path, loads: str = "") -> WarmRun:
        """Starts ``seghiresgradcam ARGUMENTS`` in ``work_dir`` in the worker (starting the
        worker first when there is none); ``loads`` names what it leaves loaded. Questions
        are answered in the order asked."""
        self.start()
        self._next_id += 1
        self._inbox[self._next_id] = []
        self._send({"id": self._next_id, "run": list(arguments), "cwd": str(work_dir)})
        return WarmRun(self, self._next_id, Path(work_dir), loads)

    def _send(self, message: dict) -> None:
        stream = self._child.process.stdin
        stream.write(json.dumps(message) + "\n")
        stream.flush()

    def cancel(self, request_id: int) -> None:
        if self.alive:
            with contextlib.suppress(OSError, ValueError):
                self._send({"cancel": request_id})

    def messages(self, request_id: int) -> list[dict]:
        """The protocol messages of this question that arrived since the last call."""
        if self._child is not None:
            for line in self._child.stdout_lines():
                try:
                    message = json.loads(line)
                except ValueError:
                    message = None
                message = message if isinstance(message, dict) else {}
                awaited = self._inbox.get(message.get("id"))
                if awaited is not None:
                    awaited.append(message)
                elif "ready" not in message:  # a forgotten question's last words, or not protocol
                    self._child.add_to_log(line)
        taken = self._inbox.get(request_id, [])
        if taken:
            self._inbox[request_id] = []
        return taken

    def forget(self, request_id: int) -> None:
        """The question's answer is no longer awaited."""
        self._inbox.pop(request_id, None)

    def error_message(self) -> str:
        return self._child.error_message() if self._child is not None else "The worker is not running."

    def release(self) -> None:
        """Ends the worker (its memory goes with it); the next question starts a new one."""
        child, self._child, self.loaded = self._child, None, ""
        self._inbox.clear()
        if child is not None:
            self.generation += 1  # its unanswered questions fail (WarmRun.poll)
            with contextlib.suppress(OSError, ValueError):
                child.process.stdin.close()  # the worker ends at the end of its input
            try:
                child.process.wait(timeout=CANCEL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
            child.kill()  # reaps it, and kills anything it left in its group

    def kill(self) -> None:
        """Kills the worker's whole process tree at once (a question that does not stop)."""
        if self._child is not None:
            self._child.kill()
        self.release()


class WarmRun:
    """One question to a ``WarmWorker``, with ``BackgroundRun``'s interface: ``poll()``
    until its state is not "running"; ``cancel()`` stops it (the worker is killed when it
    does not stop within ``CANCEL_GRACE_SECONDS``) and removes its folder."""

    def __init__(self, worker: WarmWorker, request_id: int, work_dir: Path, loads: str):
        self.worker, self.request_id, self.work_dir, self._loads = worker, request_id, work_dir, loads
        self.generation = worker.generation
        self._status = Status("running", 0.0, "starting")
        self.log: list[str] = []
        self.printed = ""  # what the command printed (``inspect``'s JSON)

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def poll(self) -> Status:
        if self._status.state != "running":
            return self._status
        for message in self.worker.messages(self.request_id):
            if "exit" in message:
                self._end(message)
                return self._status
            self._status = Status("running", float(message["fraction"]), str(message["message"]))
            if not self.log or self.log[-1] != self._status.message:
                self.log.append(self._status.message)
                LOGGER.info("explain (warm): %s", self._status.message)
        if self.worker.generation != self.generation:  # released, or replaced after a kill
            self._status = Status("failed", self._status.fraction, "The background process was ended.")
        elif not self.worker.alive:  # the worker died (out of memory, killed): this question failed
            message = self.worker.error_message()
            self.worker.release()
            self._status = Status("failed", self._status.fraction, message)
        return self._status

    def _end(self, message: dict) -> None:
        code = message["exit"]
        self.worker.forget(self.request_id)
        self.printed = str(message.get("stdout", ""))
        if code == 0:
            self.worker.loaded = self._loads
            self._status = Status("finished", 1.0, "done")
        elif code == 130:
            self._status = Status("cancelled", self._status.fraction, "cancelled")
        else:
            self.log.append(f"exit code {code}")
            error = message.get("error") or f"The computation stopped with exit code {code}."
            self._status = Status("failed", self._status.fraction, error)

    def wait(self, timeout: float | None = None) -> Status:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll().state == "running":
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("warm worker", timeout)
            time.sleep(0.02)
        return self._status

    def cancel(self) -> None:
        """Stops the question, cooperatively; a worker that does not stop in time is killed
        as a tree (the next question starts a new one). Then removes the working folder."""
        if self._status.state == "running":
            if self.worker.generation == self.generation:
                self.worker.cancel(self.request_id)
                deadline = time.monotonic() + CANCEL_GRACE_SECONDS
                while self.poll().state == "running" and time.monotonic() < deadline:
                    time.sleep(0.02)
                if self._status.state == "running":
                    self.worker.kill()
            self._status = Status("cancelled", self._status.fraction, "cancelled")
        self.worker.forget(self.request_id)
        self.remove_files()

    def drop(self) -> None:
        """Cancels without waiting: the worker skips the question, or finishes it unread."""
        if self._status.state == "running" and self.worker.generation == self.generation:
            self.worker.cancel(self.request_id)
        self._status = Status("cancelled", self._status.fraction, "cancelled")
        self.worker.forget(self.request_id)

    def remove_files(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


class WarmQuery:
    """``BackgroundQuery``'s interface over a ``WarmWorker``: a short command whose last
    printed line is JSON (``inspect``). Inspecting in the worker also warms it: the libraries
    are imported and the network built before the first run asks for them."""

    def __init__(self, worker: WarmWorker, arguments: list[str], work_dir: Path):
        self._run = worker.submit(arguments, work_dir)

    def poll(self):
        status = self._run.poll()
        if status.state == "running":
            return None
        if status.state != "finished":
            raise RuntimeError(status.message)
        description = last_json_line(self._run.printed.strip().splitlines())
        self._run.worker.loaded = description.get("name", "") if isinstance(description, dict) else ""
        return description

    def cancel(self) -> None:
        self._run.drop()
