"""Peak resident memory of a process tree, per measured operation (Linux /proc).

The kernel keeps each process's peak RSS (``VmHWM``). Writing ``5`` to
``/proc/PID/clear_refs`` resets it to the current RSS, so a reset before an operation and a
read after it give that operation's peak exactly, without sampling. Where the reset is not
allowed the figure is the peak since the process started, and :attr:`TreeMemory.reset_ok`
says so.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import psutil

MIB = 1024 * 1024


def _status_kib(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


class TreeMemory:
    """A process and all its descendants (gunicorn's workers, celery's prefork pool)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reset_ok = True

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.pid)
            return [root.pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.Error:
            return []

    def reset(self) -> None:
        for pid in self.pids():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                self.reset_ok = False

    def peak(self) -> dict[str, float]:
        """The largest single process's peak, and the sum of the tree's peaks, in MiB."""
        peaks = []
        for pid in self.pids():
            with suppress(ValueError):
                kib = _status_kib(pid, "VmHWM")
                if kib is not None:
                    peaks.append(kib)
        if not peaks:
            return {"max_process_mib": 0.0, "tree_mib": 0.0}
        return {
            "max_process_mib": round(max(peaks) * 1024 / MIB, 1),
            "tree_mib": round(sum(peaks) * 1024 / MIB, 1),
        }
