"""Which GPUs this box has, without torch: from `--gpus` / TUNEVAULT_GPUS, else what `nvidia-smi -L` lists.

The server process never imports torch (it would take seconds and a CUDA context), so the devices
it hands out come from configuration. A CPU box lists none, and jobs run as they always did.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

GPUS_ENV = "TUNEVAULT_GPUS"  # e.g. "0,1"; "none" or "" for a CPU box; unset: ask nvidia-smi
_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def parse_gpus(text: str) -> tuple[int, ...]:
    """"0,1,3" -> (0, 1, 3); "none" or "" -> (); "auto" is the caller's business."""
    value = text.strip().lower()
    if value in ("", "none"):
        return ()
    try:
        indexes = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ValueError(f"--gpus takes device indexes like 0,1 (or none), got {text!r}") from None
    if any(index < 0 for index in indexes) or len(set(indexes)) != len(indexes):
        raise ValueError(f"--gpus takes distinct non-negative device indexes, got {text!r}")
    return tuple(sorted(indexes))


def nvidia_smi_gpus() -> tuple[int, ...]:
    """The indexes `nvidia-smi -L` lists ("GPU 0: NVIDIA H100 ..."); none when it is absent.

    An nvidia-smi that is there but fails (driver not loaded yet, a hung GPU) is an error, not a CPU
    box: starting without the GPUs would fail every queued job that asked for one.
    """
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return ()
    try:
        listing = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise ValueError(f"nvidia-smi is installed but failed ({type(error).__name__}); fix the driver, or "
                         f"pass --gpus (e.g. --gpus none for a CPU-only start)") from None
    return tuple(int(match) for match in _GPU_LINE.findall(listing))


def configured_gpus(flag: str | None) -> tuple[int, ...]:
    """The flag if given, else TUNEVAULT_GPUS, else (or for "auto") what nvidia-smi lists."""
    value = flag if flag is not None else os.environ.get(GPUS_ENV, "auto")
    return nvidia_smi_gpus() if value.strip().lower() == "auto" else parse_gpus(value)


def visible_devices(devices: tuple[int, ...]) -> str:
    """CUDA_VISIBLE_DEVICES for a worker holding `devices` ("" hides every GPU: a CPU job)."""
    return ",".join(str(device) for device in devices)
