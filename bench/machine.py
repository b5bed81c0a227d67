"""What the numbers were measured on: CPU, cores, RAM, GPU, driver, library versions, git commit."""

from __future__ import annotations

import importlib
import os
import platform
import re
import subprocess
from functools import lru_cache
from pathlib import Path

from engines.provenance import git_commit

__all__ = ["machine_info", "machine_slug", "used_gpu", "gpu_peak_tflops", "GPU_PEAK_TFLOPS"]

# Dense (no sparsity) fp16/bf16 tensor-core peak in TFLOP/s from the vendors' data sheets.
# Matched by substring against torch.cuda.get_device_name(); first match wins, so order matters.
GPU_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 125.0),  # AWS g5 part (≈ A10)
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("T4", 65.0),
    ("V100", 125.0),
]


def gpu_peak_tflops(name: str) -> float | None:
    """Dense fp16/bf16 tensor peak of a GPU by its device name, or None when unknown."""
    for key, peak in GPU_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - absent or broken toolkits are reported as absent
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        return None


def _git_commit() -> dict[str, str | bool | None]:
    commit = git_commit(("bench", "engines", "rt_tagger"))
    if commit == "unknown":
        return {"commit": None, "dirty": None}
    return {"commit": commit.removesuffix("+dirty"), "dirty": commit.endswith("+dirty")}


def _gpu() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    i = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(i)
    name = torch.cuda.get_device_name(i)
    driver = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={i}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        driver = out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "name": name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "driver": driver,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "peak_fp16_bf16_dense_tflops": gpu_peak_tflops(name),
        "count": torch.cuda.device_count(),
    }


def machine_info() -> dict:
    """A JSON-ready description of this machine and the software that ran the benchmark."""
    info = dict(_static_info())
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch_threads"] = None
    # Other work on the machine skews CPU timings; the 1/5/15-min load average at the start says how busy it was.
    info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return info


@lru_cache(maxsize=1)
def _static_info() -> dict:
    """A JSON-ready description of this machine and the software that ran the benchmark."""
    versions = {
        "python": platform.python_version(),
        **{
            m: _version(m)
            for m in (
                "torch",
                "torchaudio",
                "numpy",
                "numba",
                "onnxruntime",
                "triton",
                "librosa",
                "zmq",
                "tensorrt",
                "tensorrt_rtx_bindings",
            )
        },
    }
    return {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "gpu": _gpu(),
        "versions": versions,
        "git": _git_commit(),
    }


def used_gpu(doc: dict) -> bool:
    """Whether a results document measured a GPU: a result row's device, or the backend a
    pipeline bench (stream, serve) reports in its summary."""
    backend = (doc.get("summary") or {}).get("backend") or {}
    devices = [r.get("device", "") for r in doc["results"]] + [backend.get("device", "")]
    return any(str(d).startswith("cuda") for d in devices)


def machine_slug(info: dict, use_gpu: bool) -> str:
    """A short file-name-safe machine label: the GPU name when one was used, else the CPU size."""
    if use_gpu and info.get("gpu"):
        name = info["gpu"]["name"].lower().replace("nvidia", "")
    else:
        name = f"cpu{info.get('cpu_affinity') or info.get('cpu_cores')}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
