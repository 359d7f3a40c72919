"""What this worker node offers: cores, memory, GPUs (nvidia-smi), overridable by configuration."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess

from common.pilot_protocol import PayloadRuntimeName, PilotRegistration
from pilot.config import PilotSettings

VERSION = "0.1.0"


def count_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def identify(settings: PilotSettings, runtime: PayloadRuntimeName = "plain") -> PilotRegistration:
    gpus = settings.gpus if settings.gpus is not None else count_gpus()
    resource_type = settings.resource_type or ("gpu" if gpus > 0 else "cpu")
    return PilotRegistration(
        host=settings.host or socket.gethostname(),
        resource_type=resource_type,
        cores=settings.cores or len(os.sched_getaffinity(0)),
        memory_mb=settings.memory_mb or memory_mb(),
        gpus=gpus,
        slots=settings.slots,
        version=VERSION,
        runtime=runtime,
        batch_system=settings.batch_system,
        # a batch system that cannot tell the job its id before it starts (the local one): the pilot's pid
        batch_job_id=settings.batch_job_id or (str(os.getpid()) if settings.batch_system else None),
    )
