"""The warm worker: one long-lived process that runs command-line commands sent to it, so
that a second question about the same CT does not import torch, build the network, prepare
the CT and run inference again (``reuse``, ``ModelCard.network``).

The protocol is JSON, one object per line (docs/slicer.md has it in full):

- the worker starts with ``{"ready": true, "pid": ..., "version": ...}``;
- ``{"id": 7, "run": ["explain", ...], "cwd": "/a/folder"}`` runs that command in that
  folder; it answers ``{"id": 7, "fraction": 0.3, "message": "..."}`` lines while it runs and
  ends with ``{"id": 7, "exit": 0, "error": "", "stdout": "..."}`` (the command's exit code,
  its error message, what it printed);
- ``{"cancel": 7}`` stops that run between two windows (it ends with exit code 130 and writes
  nothing); ``{"release": true}``, the end of the input or ``--idle-seconds`` without a
  request end the worker, and its memory goes with it.

The protocol has stdout to itself: anything else printed (the commands' own text, a
library's messages) goes to stderr, the worker's log.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import sys
import threading
import traceback

from . import __version__
from .reuse import keep_prepared_inputs

IDLE_SECONDS = 20 * 60  # a worker nobody asks for this long ends, and gives its memory back
STDOUT_KEPT = 1 << 16  # the last characters of a command's printed output sent with its end


class _Recorder(io.TextIOBase):
    """A text stream that keeps what is written, optionally passing it on."""

    def __init__(self, passes_to=None):
        self.text, self.passes_to = [], passes_to

    def write(self, text: str) -> int:
        self.text.append(text)
        if self.passes_to is not None:
            self.passes_to.write(text)
        return len(text)

    def flush(self) -> None:
        if self.passes_to is not None:
            self.passes_to.flush()

    def value(self) -> str:
        return "".join(self.text)


class Worker:
    def __init__(self, protocol, idle_seconds: float):
        self._protocol, self._idle_seconds = protocol, idle_seconds
        self._lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()
        self._cancelled: dict[int, threading.Event] = {}

    def send(self, message: dict) -> None:
        with self._lock:
            self._protocol.write(json.dumps(message) + "\n")
            self._protocol.flush()

    def _cancel_event(self, request_id) -> threading.Event:
        with self._lock:
            return self._cancelled.setdefault(request_id, threading.Event())

    def read_requests(self, stream) -> None:
        """On its own thread: cancellations take effect at once, runs are queued."""
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                print(f"worker: not a request: {line.strip()[:200]}", file=sys.stderr)
                continue
            if "cancel" in message:
                self._cancel_event(message["cancel"]).set()
            else:
                self._requests.put(message)
        self._requests.put({"release": True})  # the module's end of the pipe closed

    def serve(self) -> int:
        self.send({"ready": True, "pid": os.getpid(), "version": __version__})
        while True:
            try:
                message = self._requests.get(timeout=self._idle_seconds)
            except queue.Empty:
                print("worker: idle, ending", file=sys.stderr)
                return 0
            if message.get("release"):
                return 0
            self.run(message)

    def run(self, message: dict) -> None:
        from .cli import main

        request_id = message.get("id")
        cancelled = self._cancel_event(request_id)
        if cancelled.is_set():  # cancelled while it waited
            with self._lock:
                self._cancelled.pop(request_id, None)
            self.send({"id": request_id, "exit": 130, "error": "cancelled", "stdout": ""})
            return
        errors, printed = _Recorder(passes_to=sys.stderr), _Recorder()
        folder = os.getcwd()
        try:
            os.chdir(message.get("cwd") or folder)
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                code = main(
                    list(message["run"]),
                    progress=lambda fraction, text: self.send(
                        {"id": request_id, "fraction": round(float(fraction), 4), "message": text}
                    ),
                    cancel=cancelled.is_set,
                )
        except SystemExit as stop:  # argparse refusing the arguments
            code = stop.code if isinstance(stop.code, int) else 2
        except BaseException:  # a bug must not end the worker: it answers, and the log has the trace
            traceback.print_exc(file=errors)
            code = 1
        finally:
            os.chdir(folder)
            with self._lock:
                self._cancelled.pop(request_id, None)
        lines = [line for line in errors.value().splitlines() if line.strip() and not line.startswith(" ")]
        error = lines[-1].split("error: ", 1)[-1] if code and lines else ""
        self.send({"id": request_id, "exit": code, "error": error, "stdout": printed.value()[-STDOUT_KEPT:]})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SegHiResGradCAMLib.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS)
    arguments = parser.parse_args(argv)
    # The protocol keeps the real stdout; file descriptor 1 (C libraries, stray prints) goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    keep_prepared_inputs()
    worker = Worker(protocol, arguments.idle_seconds)
    threading.Thread(target=worker.read_requests, args=(sys.stdin,), daemon=True).start()
    return worker.serve()


if __name__ == "__main__":
    sys.exit(main())
