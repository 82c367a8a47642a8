"""A description of the machine a benchmark ran on, printed next to every number."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str = "cpu") -> dict:
    import torch
    import transformers

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "device": device,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        info["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def describe_machine(info: dict) -> str:
    """One line: CPU model, cores, torch threads, software versions (and the GPU, if any)."""
    parts = [f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores",
             f"torch threads {info.get('torch_threads', '?')}",
             f"torch {info.get('torch', '?')}", f"transformers {info.get('transformers', '?')}",
             f"device {info.get('device', '?')}"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    loads = [info.get(k) for k in ("load_avg_start", "load_avg_end")]
    if any(loads):
        parts.append("load avg " + " -> ".join("/".join(f"{x:g}" for x in v) for v in loads if v))
    return ", ".join(parts)
