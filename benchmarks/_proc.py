"""What the memory benchmarks read from /proc (Linux), and the long file they decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def status_kb(field: str, pid: int | str = "self", required: bool = False) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM, ...); where it cannot be read, None, or
    with `required` a RuntimeError (a figure that must not come out as a silent 0)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    if required:
        raise RuntimeError(f"/proc/{pid}/status: no {field}")
    return None


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def private_kb(pid: int) -> int:
    """Private (copied or own) resident pages of a process, from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def write_long_file(
    path: Path,
    seconds: float,
    rate: int = 16000,
    subtype: str = "FLOAT",
    seed: int = 0,
    block_s: float = 10.0,
) -> None:
    """A mono file of a 220 Hz sine plus noise, written block by block (never whole in memory)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    block = int(block_s * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype=subtype) as fh:
        for lo in range(0, int(seconds * rate), block):
            t = (lo + np.arange(block)) / rate
            x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(block)
            fh.write(x.astype(np.float32))
