"""Slurm: sbatch, squeue, scancel (the commands of the cluster SLURM_CONF names)."""
from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from services.pilot_factory.batch import BatchError, BatchJob, BatchState, PilotJob
from services.pilot_factory.settings import FactorySettings

COMMAND_TIMEOUT_S = 60
# squeue's states (long form) by what they mean for a pilot
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}


class Slurm:
    name = "slurm"

    def __init__(self, settings: FactorySettings) -> None:
        self.pilot_command = settings.factory_pilot_command

    async def submit(self, job: PilotJob) -> str:
        try:
            Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # slurmd fails the job if it cannot open its log
        except OSError as exc:
            raise BatchError(f"log directory {job.log_dir}: {exc}") from exc
        args = ["sbatch", "--parsable", f"--job-name={job.name}", "--nodes=1", "--ntasks=1",
                f"--cpus-per-task={job.cores}", f"--mem={job.memory_mb}", "--export=NONE",
                f"--output={job.log_dir}/{job.name}-%j.log"]
        if job.gpus:
            args.append(f"--gres=gpu:{job.gpus}")
        for option, flag in (("partition", "--partition"), ("account", "--account"), ("time_limit_min", "--time")):
            if option in job.options:
                args.append(f"{flag}={job.options[option]}")
        out = await _run(args, stdin=self.script(job))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise BatchError(f"sbatch answered {out.strip()!r}")
        return job_id

    def script(self, job: PilotJob) -> str:
        """The batch script: the pilot with the allocation's cores and memory, its batch job id, and its settings
        (the job gets no environment of the factory's: --export=NONE)."""
        exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(job.env.items()))
        return (
            "#!/bin/sh\n"
            # the pilot's installation first (the commands of the site's transformations are installed with it)
            f"export PATH={shlex.quote(str(Path(self.pilot_command).parent))}"
            ":\"${PATH:-/usr/local/bin:/usr/bin:/bin}\" HOME=\"${HOME:-/tmp}\"\n"
            f"{exports}\n"
            "export WMS_PILOT_CORES=\"${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-"
            f"{job.cores}" "}}\"\n"
            "export WMS_PILOT_MEMORY_MB=\"${SLURM_MEM_PER_NODE:-" f"{job.memory_mb}" "}\"\n"
            "export WMS_PILOT_BATCH_SYSTEM=slurm WMS_PILOT_BATCH_JOB_ID=\"$SLURM_JOB_ID\"\n"
            f"exec {shlex.quote(self.pilot_command)}\n"
        )

    async def jobs(self, names_prefix: str) -> list[BatchJob]:
        out = await _run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%j|%r"])
        found = []
        for line in out.splitlines():
            job_id, state, name, reason = (line.split("|", 3) + ["", "", ""])[:4]
            if not name.startswith(names_prefix):
                continue
            if state in PENDING:
                found.append(BatchJob(job_id, name, BatchState.PENDING, reason))
            elif state in RUNNING:
                found.append(BatchJob(job_id, name, BatchState.RUNNING))
            else:  # COMPLETED, CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE
                found.append(BatchJob(job_id, name, BatchState.ENDED, state))
        return found

    async def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            await _run(["scancel", *job_ids])


async def _run(args: list[str], stdin: str | None = None) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise BatchError(f"{args[0]}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None),
                                          COMMAND_TIMEOUT_S)
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise BatchError(f"{args[0]} did not answer within {COMMAND_TIMEOUT_S} s") from exc
    if process.returncode != 0:
        raise BatchError(f"{args[0]} exited {process.returncode}: {err.decode(errors='replace').strip()[:500]}")
    return out.decode(errors="replace")


def create(settings: FactorySettings) -> Slurm:
    return Slurm(settings)
