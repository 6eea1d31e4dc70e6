"""What the benchmark needs from the system: the machine's description, peak memory, memory limits."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import time
from typing import Any

import torch


# ----- machine description --------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU model name and its flags, from ``/proc/cpuinfo`` (Linux; elsewhere ``platform``)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def machine_info(device: str, threads: int = 0) -> dict[str, Any]:
    """CPU model and flags that matter, cores, threads, torch version and the device's name."""
    model, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "torch_default_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_bf16_native": bool({"avx512_bf16", "amx_bf16"} & flags),
        "cpu_fp16_native": bool({"avx512_fp16", "amx_fp16"} & flags),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
        "device": device,
        "device_name": model,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda_version"] = torch.version.cuda
    return info


# ----- memory -----------------------------------------------------------------------------------------
def status_kb(key: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class PeakMemory:
    """Peak memory of a phase: CUDA max allocated, or on CPU the resident-set high-water mark delta."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_delta"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
            return
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "cpu_peak_rss_delta_upper_bound"
        self.base = (status_kb("VmRSS") or 0) * 1024

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = status_kb("VmHWM")
        if hwm is None:
            import resource

            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(0, hwm * 1024 - self.base)


def load_average() -> float:
    """The 1-minute load average (-1 where unknown): other jobs on the machine skew timings."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def memory_limit_bytes(limit_gb: float) -> int:
    """``limit_gb`` in bytes, or (0) 80% of the memory available now; 0 when unknown."""
    if limit_gb > 0:
        return int(limit_gb * 2**30)
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0
    return int(0.8 * available * 1024)


def watch_memory(proc: subprocess.Popen[str], limit: int, flag: dict[str, int]) -> None:
    """Kill ``proc`` if its resident set exceeds ``limit`` bytes (polled every 20 ms)."""
    while proc.poll() is None:
        rss = status_kb("VmRSS", proc.pid)
        if rss is not None:
            flag["peak"] = max(flag.get("peak", 0), rss * 1024)
            if limit and rss * 1024 > limit:
                flag["killed"] = 1
                proc.kill()
                return
        time.sleep(0.02)
