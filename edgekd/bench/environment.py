"""What a benchmark ran on: the CPU, its cores, the OS, Python and the versions of every inference package.

Latency numbers mean little without the machine and the library versions, so every benchmark result
carries this record. Package versions come from the installed distributions' metadata, which does not
import them: importing tensorrt, for one, would initialize CUDA.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from edgekd.formats import backend_packages

# Module name -> the pip distributions that provide it (the first one installed wins): the training stack,
# numpy, and every package a backend's exporter or runner needs, as the backend catalog declares them
# (onnxruntime and tensorrt come under several distribution names: GPU builds, CUDA-specific wheels).
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    **backend_packages(),
    "numpy": ("numpy",),
}
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class EnvironmentRecord:
    """The machine and software a measurement ran on; ``threads`` is the inference thread count used."""

    cpu: str
    physical_cores: int | None
    logical_cores: int | None
    usable_cores: int | None  # the cores this process may run on (containers and taskset restrict it)
    os: str
    machine: str
    python: str
    packages: dict[str, str | None] = field(default_factory=dict)
    cuda_device: str | None = None
    threads: int | None = None
    # The vendor and the instruction-set extensions that decide which float kernels run: two machines that
    # differ here round differently, so results are bit-exact only within one of them.
    cpu_vendor: str | None = None
    cpu_isa: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def environment_record(threads: int | None = None) -> EnvironmentRecord:
    """Describe this machine; ``threads`` records the inference thread count a benchmark used."""
    return EnvironmentRecord(
        cpu=cpu_model(),
        physical_cores=physical_cores(),
        logical_cores=os.cpu_count(),
        usable_cores=_usable_cores(),
        os=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
        packages={module: package_version(module) for module in PACKAGES},
        cuda_device=cuda_device_name(),
        threads=threads,
        cpu_vendor=cpu_vendor(),
        cpu_isa=cpu_isa(),
    )


def package_version(module: str) -> str | None:
    """The installed version of a package (by module name, see PACKAGES), or None when it is missing."""
    for distribution in PACKAGES.get(module, (module,)):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's marketing name from /proc/cpuinfo (x86 'model name', ARM 'Hardware'/'Model'), else a guess."""
    for key in ("model name", "Hardware", "Model"):
        value = _cpuinfo_values(cpuinfo, key)
        if value:
            return value[0]
    return platform.processor() or platform.machine() or "unknown"


# The /proc/cpuinfo flags that change which kernels oneDNN, ONNX Runtime and OpenVINO pick.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


def cpu_vendor(cpuinfo: Path = CPUINFO) -> str | None:
    """GenuineIntel, AuthenticAMD, ... (x86 'vendor_id'; ARM's 'CPU implementer' code)."""
    for key in ("vendor_id", "CPU implementer"):
        values = _cpuinfo_values(cpuinfo, key)
        if values:
            return values[0]
    return None


def cpu_isa(cpuinfo: Path = CPUINFO) -> list[str]:
    """The ISA_FLAGS this CPU reports, in that order."""
    flags = _cpuinfo_values(cpuinfo, "flags") or _cpuinfo_values(cpuinfo, "Features")
    present = set(flags[0].split()) if flags else set()
    return [flag for flag in ISA_FLAGS if flag in present]


def physical_cores(cpuinfo: Path = CPUINFO) -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo: hyper-threads share a core and are counted once."""
    packages = _cpuinfo_values(cpuinfo, "physical id")
    cores = _cpuinfo_values(cpuinfo, "core id")
    if packages and len(packages) == len(cores):
        return len(set(zip(packages, cores, strict=True)))
    # ARM and some VMs list no core ids: each listed processor is then a core of its own.
    processors = _cpuinfo_values(cpuinfo, "processor")
    return len(processors) or None


def cuda_device_name() -> str | None:
    """The first CUDA GPU's name, or None without one.

    Asked of torch only when this process already imported it (a build): `edgekd bench` of a file must not
    pay for importing torch, nor need it installed (the device install has no torch), so it asks nvidia-smi.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return _nvidia_smi_gpu_name()


def _nvidia_smi_gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):  # a driver that does not answer: no GPU to record
        return None
    names = listing.strip().splitlines()
    return names[0].strip() if names else None


def _cpuinfo_values(cpuinfo: Path, key: str) -> list[str]:
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # not Linux, or /proc not mounted
        return []
    values = []
    for line in text.splitlines():
        name, separator, value = line.partition(":")
        if separator and name.strip() == key:
            values.append(value.strip())
    return values


def _usable_cores() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def available_memory_bytes() -> tuple[int, str]:
    """Memory this machine has available now (Linux's MemAvailable), and how that was read (for messages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "this machine's available memory"
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
