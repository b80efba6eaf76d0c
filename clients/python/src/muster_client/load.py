"""The host's CPU and memory use, from /proc on Linux (0 elsewhere), for heartbeats."""

from __future__ import annotations

import threading
from typing import Optional, Tuple

__all__ = ["LoadSampler"]


def _read_cpu_times(path: str) -> Optional[Tuple[int, int]]:
    """(busy, total) jiffies of all CPUs since boot, from the `cpu` line of /proc/stat."""
    try:
        with open(path) as f:
            first = f.readline()
    except OSError:
        return None
    fields = first.split()
    if not fields or fields[0] != "cpu":
        return None
    try:
        values = [int(v) for v in fields[1:]]
    except ValueError:
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # counted in user and nice, so it is left out of the total.
    counted = values[:8]
    if len(counted) < 4:
        return None
    idle = counted[3] + (counted[4] if len(counted) > 4 else 0)
    total = sum(counted)
    return total - idle, total


def _read_memory_percent(path: str) -> Optional[float]:
    info = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    try:
                        info[key] = int(parts[0])
                    except ValueError:
                        pass
    except OSError:
        return None
    total = info.get("MemTotal")
    if not total:
        return None
    available = info.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
    return _clamp(100.0 * (total - available) / total)


def _clamp(value: float) -> float:
    return max(0.0, min(100.0, value))


class LoadSampler:
    """CPU percent since the previous sample (since creation for the first) and memory percent
    in use. Where /proc is missing (macOS, Windows) both are 0."""

    def __init__(self, stat_path: str = "/proc/stat", meminfo_path: str = "/proc/meminfo") -> None:
        self._stat = stat_path
        self._meminfo = meminfo_path
        self._lock = threading.Lock()
        self._last = _read_cpu_times(stat_path)

    def sample(self) -> Tuple[float, float]:
        """(cpu_percent, memory_percent), each within 0..100."""
        with self._lock:
            now = _read_cpu_times(self._stat)
            cpu = 0.0
            if now is not None:
                if self._last is not None and now[1] > self._last[1]:
                    busy = now[0] - self._last[0]
                    total = now[1] - self._last[1]
                    cpu = _clamp(100.0 * busy / total)
                elif now[1] > 0:
                    cpu = _clamp(100.0 * now[0] / now[1])
                self._last = now
        memory = _read_memory_percent(self._meminfo)
        return round(cpu, 1), round(memory or 0.0, 1)
