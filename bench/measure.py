"""Measuring on noisy shared machines, where wall times vary with the load: CPU-time ratios of two
computations interleaved in one process, and peak RSS of a computation run alone in a
fresh process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


def cpu_seconds(function, *arguments) -> float:
    started = time.process_time()
    function(*arguments)
    return time.process_time() - started


def interleaved_ratio(baseline, candidate, pairs: int) -> tuple[float, list[float], float]:
    """Median of candidate/baseline CPU-time ratios over interleaved pairs, the ratios, and
    the median baseline time."""
    ratios, baseline_times = [], []
    for _ in range(pairs):
        baseline_time = cpu_seconds(baseline)
        ratios.append(cpu_seconds(candidate) / baseline_time)
        baseline_times.append(baseline_time)
    return statistics.median(ratios), ratios, statistics.median(baseline_times)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def report_peak_rss(computation) -> None:
    """Runs ``computation`` and prints its peak RSS (MiB) as a JSON line: the whole
    process's peak and the part above the RSS just before it (the peak is reset first)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak RSS (VmHWM) to the current RSS
    before = _status_mib("VmRSS")
    computation()
    peak = _status_mib("VmHWM")
    print(json.dumps({"before_mib": before, "peak_mib": peak, "added_mib": peak - before}))


def peak_rss_in_fresh_process(script: str, *arguments: str) -> dict:
    """Runs ``script --memory-probe ARGUMENTS`` and returns what report_peak_rss printed."""
    output = subprocess.run(
        [sys.executable, script, "--memory-probe", *arguments], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])
