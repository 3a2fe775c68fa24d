"""What a measurement ran on: the CPU, its instruction sets of note, torch's threads and device.

The same seed trained on two machines, or with another thread count, gives other numbers in the last
bits, and a training run amplifies them (the readings study saw 48.5 instead of 50.2 mIoU for one
generator seed retrained elsewhere). So every trained stage records :func:`machine_record` in its
``"done"`` line of ``RUN/log.jsonl``, and every results file of ``benchmarks/`` records it beside its
numbers: two runs that differ can then be told apart by machine before anything else is suspected.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["machine_record", "run_machine", "code_commit"]

#: instruction sets whose kernels change torch's CPU arithmetic (oneDNN picks among them)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def _cpu() -> tuple[str, list[str]]:
    model, flags = "", []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ISA_FLAGS if f in have]
    return model or platform.processor() or platform.machine(), flags


def machine_record(device: torch.device | str | None = None) -> dict[str, object]:
    """The CPU model, its ISA flags of note, the cores, torch's version and threads, and ``device``
    (its CUDA name when it is a GPU)."""
    cpu, isa = _cpu()
    record: dict[str, object] = {
        "cpu": cpu,
        "isa": isa,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None:
        dev = torch.device(device)
        record["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return record


def run_machine(records: list[dict], stage: str = "baseline") -> dict | None:
    """The machine record of ``stage``'s ``done`` line among a run's log records (None when not logged):
    where that run trained, which a study's results file records per run."""
    for rec in reversed(records):
        if rec.get("stage") == stage and rec.get("event") == "done" and rec.get("machine"):
            return rec["machine"]
    return None


def code_commit(root: str | Path) -> str:
    """The git commit of the checkout at ``root`` (``+dirty`` when it has uncommitted changes); "unknown"
    outside a checkout."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
