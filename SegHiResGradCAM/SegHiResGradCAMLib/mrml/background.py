"""Runs the command-line pipeline in a separate process and reports on it when polled.

Qt-free: the Slicer widget polls ``BackgroundRun.poll()`` from a QTimer, so the UI stays
responsive, Cancel can kill the process, and GPU memory is released when it ends. torch is
imported only in the child process.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Status:
    state: str  # "running", "finished", "failed" or "cancelled"
    fraction: float
    message: str


class BackgroundRun:
    """``python -m SegHiResGradCAMLib.cli ARGUMENTS --progress json`` in ``work_dir``."""

    def __init__(self, arguments: list[str], work_dir: Path, python: str | None = None):
        self.work_dir = Path(work_dir)
        self._lines: queue.Queue[str] = queue.Queue()
        self._errors: list[str] = []
        self._status = Status("running", 0.0, "starting")
        command = [python or sys.executable, "-m", "SegHiResGradCAMLib.cli", *arguments, "--progress", "json"]
        # The child finds this package where this process found it (Slicer's module folder).
        package_parent = str(Path(__file__).resolve().parents[2])
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, environment.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            command,
            cwd=self.work_dir,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self._process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._read, args=(self._process.stderr, self._errors.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            try:
                update = json.loads(line)
                self._status = Status("running", float(update["fraction"]), str(update["message"]))
            except (ValueError, KeyError, TypeError):
                continue  # not a progress line

    def poll(self) -> Status:
        if self._status.state != "running":
            return self._status
        self._drain()
        if self._process.poll() is not None:
            for reader in self._readers:
                reader.join(timeout=5)
            self._drain()
            if self._process.returncode == 0:
                self._status = Status("finished", 1.0, "done")
            else:
                self._status = Status("failed", self._status.fraction, self.error_message())
        return self._status

    def error_message(self) -> str:
        """The process's own message: its last error line, without the program prefix."""
        lines = [line for line in self._errors if line.strip()]
        if not lines:
            return f"The computation stopped with exit code {self._process.returncode}."
        last = lines[-1]
        return last.split("error: ", 1)[1] if "error: " in last else last

    def wait(self, timeout: float | None = None) -> Status:
        self._process.wait(timeout)
        return self.poll()

    def cancel(self) -> None:
        """Stops the process and removes its working folder: nothing is left behind."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._status = Status("cancelled", self._status.fraction, "cancelled")
        self.remove_files()

    def remove_files(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
