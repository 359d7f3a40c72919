"""The local 'batch system': pilots as processes of this machine (what the pilot daemon does by hand), for a
one-machine setup without Slurm. A batch job is a process; its id is its pid. The factory remembers the processes it
started; one started by an earlier factory process is found by the name in its environment and followed by pid."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from services.pilot_factory.batch import BatchError, BatchJob, BatchState, PilotJob
from services.pilot_factory.settings import FactorySettings

NAME_VARIABLE = "WMS_PILOT_BATCH_NAME"


class Local:
    name = "local"

    def __init__(self, settings: FactorySettings) -> None:
        self.pilot_command = settings.factory_pilot_command
        self._children: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}  # pid -> (name, process)

    async def submit(self, job: PilotJob) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"), **job.env,
               "WMS_PILOT_CORES": str(job.cores), "WMS_PILOT_MEMORY_MB": str(job.memory_mb),
               "WMS_PILOT_GPUS": str(job.gpus), "WMS_PILOT_BATCH_SYSTEM": self.name, NAME_VARIABLE: job.name}
        Path(job.log_dir).mkdir(parents=True, exist_ok=True)
        try:
            with open(Path(job.log_dir) / f"{job.name}.log", "ab") as log:
                process = subprocess.Popen([self.pilot_command], env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise BatchError(f"{self.pilot_command}: {exc}") from exc
        job_id = str(process.pid)
        self._children[job_id] = (job.name, process)
        # the pilot learns its batch job id only now: its pid (it reads WMS_PILOT_BATCH_JOB_ID, or its own pid)
        return job_id

    async def jobs(self, names_prefix: str) -> list[BatchJob]:
        found: dict[str, BatchJob] = {}
        for job_id, (name, process) in list(self._children.items()):
            if not name.startswith(names_prefix):
                continue
            code = process.poll()
            if code is None:
                found[job_id] = BatchJob(job_id, name, BatchState.RUNNING)
            else:
                found[job_id] = BatchJob(job_id, name, BatchState.ENDED, f"exit {code}")
        for proc in Path("/proc").iterdir():  # pilots an earlier factory process started
            if not proc.name.isdigit() or proc.name in found:
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(NAME_VARIABLE.encode() + b"="):
                    name = item.split(b"=", 1)[1].decode(errors="replace")
                    if name.startswith(names_prefix):
                        found[proc.name] = BatchJob(proc.name, name, BatchState.RUNNING)
        return list(found.values())

    async def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            child = self._children.get(job_id)
            if child is not None and child[1].poll() is None:
                child[1].terminate()


def create(settings: FactorySettings) -> Local:
    return Local(settings)
