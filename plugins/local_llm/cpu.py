"""What the CPU and the llama.cpp build can do, read without loading a model."""

from __future__ import annotations

import ctypes
import os
import sys

ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86-64


def amx_permitted() -> bool:
    """True when the kernel lets this process use AMX tiles. A CPU (or a VM's CPUID) can
    advertise AMX while the hypervisor leaves it disabled; executing a tile instruction
    then kills the process with SIGILL."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) == 0


def extra_buffers_allowed(mode: str, system_info: str) -> bool:
    """Whether llama.cpp may use CPU-specific weight buffers (AMX, repacked layouts).
    ``auto`` allows them unless the build has AMX kernels the kernel will not permit."""
    if mode in ("on", "off"):
        return mode == "on"
    amx = any(name.startswith("AMX") for name in native_features(system_info))
    return not amx or amx_permitted()


def native_features(system_info: str) -> list[str]:
    """The CPU-specific instruction sets (AVX-512 variants, AMX) a llama.cpp build uses,
    from ``llama_print_system_info()`` ("AVX512 = 1 | AMX_INT8 = 1 | ...")."""
    found = []
    for item in system_info.replace("CPU :", "|").split("|"):
        name, _, value = item.partition("=")
        name = name.strip()
        if value.strip() == "1" and name.startswith(("AVX512", "AMX")):
            found.append(name)
    return found
