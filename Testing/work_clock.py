"""Waiting for background work by the work it does, not by the clock alone.

A test that waits for a background run with a fixed limit fails on a busy machine, where the
same work takes several times longer. Here the limit is on a stall: the wait goes on as
long as any of this process's descendants (the run's interpreter, Ray's workers) keeps
using CPU time, and fails only after ``stall`` seconds without any, or after ``ceiling``
seconds in all (a run that loops forever). The waiting process itself does not count: its
own polling would always look like work.
"""

import os
import time

WORK_STEP = 0.05  # CPU seconds that count as progress between two measurements
MEASURE_EVERY = 1.0  # seconds between two measurements (reading /proc costs a little)


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used) of every process, from /proc (Linux); empty elsewhere."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    table = {}
    if not os.path.isdir("/proc"):
        return table
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stream:
                stat = stream.read()
        except OSError:
            continue  # the process ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    return table


def work_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by the living descendants of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0.0, list(children.get(root, []))
    while pending:
        pid = pending.pop()
        total += table[pid][1]
        pending += children.get(pid, [])
    return total


def wait_while_working(
    condition, stall: float = 120.0, what: str = "the condition", ceiling: float = 3600.0, between=None
):
    """Returns ``condition()``'s first true value; fails after ``stall`` seconds in which no
    work was done, or after ``ceiling`` seconds. ``between()`` runs between looks (an event
    loop's turn)."""
    started = last_progress = measured = time.monotonic()
    work = work_seconds()
    while not (found := condition()):
        now = time.monotonic()
        if now - measured >= MEASURE_EVERY:
            current, measured = work_seconds(), now
            # A descendant that ended takes its CPU time along: any change is work.
            if abs(current - work) > WORK_STEP:
                work, last_progress = current, now
        if now - last_progress > stall:
            raise AssertionError(f"{what} did not happen: no work done for {stall:.0f} s")
        if now - started > ceiling:
            raise AssertionError(f"{what} did not happen within {ceiling:.0f} s, though work went on")
        if between is not None:
            between()
        time.sleep(0.05)
    return found
