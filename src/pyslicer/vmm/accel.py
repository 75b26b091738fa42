"""Choose between hardware virtualisation and TCG: KVM only where it really is VT-x or AMD-V."""

from __future__ import annotations

import os
from pathlib import Path

from pyslicer.errors import ConfigError
from pyslicer.vmm.base import Accel


def hardware_kvm_available() -> bool:
    # kvm_pvm also offers /dev/kvm but stock guest kernels cannot run on it (MACHINE-FACTS.md).
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and any(
        Path(f"/sys/module/{module}").exists() for module in ("kvm_intel", "kvm_amd")
    )


def choose_accel(requested: str) -> tuple[Accel, str]:
    """Return the accelerator and a sentence saying why it was chosen."""
    if requested == "tcg":
        return "tcg", "tcg: forced by config"
    if requested == "kvm":
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise ConfigError("config.accel: 'kvm' was asked for but /dev/kvm is not usable here")
        return "kvm", "kvm: forced by config"
    if requested != "auto":
        raise ConfigError(f"config.accel: {requested!r} is not one of auto, kvm, tcg")
    if hardware_kvm_available():
        return "kvm", "kvm: hardware virtualisation (kvm_intel/kvm_amd) found"
    if Path("/sys/module/kvm_pvm").exists():
        return "tcg", "tcg: /dev/kvm is PVM, which cannot run stock guest kernels"
    return "tcg", "tcg: no hardware virtualisation found"


def host_tsc_khz() -> int:
    """The host TSC rate; TCG guests need it on the command line or they may hang calibrating."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 2_000_000
