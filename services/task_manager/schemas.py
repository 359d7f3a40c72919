"""Request and response models of the task-manager API."""
from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from common.dsm import DatasetName
from common.job_listing import JobView
from common.policies import ResourceType
from common.states import FileRole, FileState, JobState, TaskState

MAX_METADATA_BYTES = 64 * 1024

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
# Variables a task may not set for its payload: they would change what runs (the loader, the search paths) or
# speak for the WMS (its own WMS_* settings and credentials).
FORBIDDEN_ENV_PREFIXES = ("LD_", "WMS_", "PYTHON", "DYLD_")
FORBIDDEN_ENV = frozenset({"PATH", "IFS", "BASH_ENV", "ENV", "PERL5LIB", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS"})


def _find_nul(value: Any, path: str) -> str | None:
    """PostgreSQL text and jsonb cannot hold NUL: find one so it is a 422, not a database error."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_nul(k, f"{path}.{k}") or _find_nul(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_nul(v, f"{path}[{i}]")
            if found:
                return found
    return None


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: Annotated[str, StringConstraints(min_length=1, max_length=4096)]
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(default_factory=list, max_length=1000)
    env: dict[EnvName, Annotated[str, StringConstraints(max_length=4096)]] = Field(default_factory=dict)
    container_image: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")] | None = Field(
        None, description="the name of an image of the site's registry (GET /api/v1/transformations lists them); "
        "never a path")
    network: bool = Field(True, strict=True, description="false: the payload runs without a network")

    @model_validator(mode="after")
    def _runnable_here(self) -> Payload:
        for name in self.env:
            if name.upper() in FORBIDDEN_ENV or name.upper().startswith(FORBIDDEN_ENV_PREFIXES):
                raise ValueError(f"env may not set {name}: it would change what runs or speak for the WMS")
        return self


class TransformationCall(BaseModel):
    """A site-declared transformation and the values of its parameters (GET /api/v1/transformations)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    parameters: dict[Annotated[str, StringConstraints(max_length=64)],
                     Annotated[str, StringConstraints(max_length=4096)]] = Field(default_factory=dict,
                                                                                  max_length=100)


class SplitRule(BaseModel):
    """How the input dataset becomes jobs: N files per job, at most N bytes per job, or about N events per job."""

    model_config = ConfigDict(extra="forbid")

    by: Literal["files", "bytes", "events"]
    size: int = Field(ge=1, le=2**62, strict=True)


class TaskDescription(BaseModel):
    """The formalized description of a task, as the WFMS submits it."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    type: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")]
    input_dataset: DatasetName
    output_dataset: DatasetName
    transformation: TransformationCall | None = Field(
        None, description="what the jobs run: a transformation of the site's registry (exactly one of "
        "transformation and payload)")
    payload: Payload | None = Field(
        None, description="a raw command: refused (422) unless the site runs with WMS_ALLOW_ARBITRARY_COMMANDS=1, "
        "a development switch")
    resource_type: ResourceType | None = Field(None, description="default: the transformation's, else cpu")
    cores: int | None = Field(None, ge=1, le=1024, strict=True, description="default: the transformation's, else 1")
    memory_mb: int | None = Field(None, ge=1, le=2**20, strict=True,
                                  description="default: the transformation's, else 2000")
    split: SplitRule
    max_attempts: int = Field(3, ge=1, le=100, strict=True)
    priority: int = Field(10, ge=1, le=1000, strict=True)
    wfms_request_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> TaskDescription:
        if (self.transformation is None) == (self.payload is None):
            raise ValueError("name exactly one of transformation and payload")
        if self.input_dataset == self.output_dataset:
            raise ValueError("output_dataset must differ from input_dataset")
        nul = _find_nul(self.model_dump(), "body")
        if nul:
            raise ValueError(f"NUL character in {nul}")
        if len(json.dumps(self.metadata)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata larger than {MAX_METADATA_BYTES} bytes")
        return self


class PriorityChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=1, le=1000, strict=True)


class FileProgress(BaseModel):
    total: int | None = Field(description="input files of the task; null while an open dataset is still growing")
    assigned: int = Field(description="input files already put into jobs")
    done: int
    failed: int
    cancelled: int
    in_progress: int
    pending: int


class JobCounts(BaseModel):
    """Jobs by state (every state, 0 where none)."""

    ready: int
    held: int
    dispatched: int
    running: int
    finished: int
    failed: int
    cancelled: int

    @classmethod
    def of(cls, by_state: dict[JobState, int]) -> JobCounts:
        return cls(**{state.value: by_state.get(state, 0) for state in JobState})


class OutputTotals(BaseModel):
    """What a task registered in its output dataset."""

    files: int
    bytes: int
    events: int
    rejected: int = Field(description="outputs the DSM refused for good (the task's error says why)")


class Progress(BaseModel):
    files: FileProgress
    jobs: JobCounts
    percent: float | None
    rate_files_per_s: float | None
    eta_s: float | None


class PayloadView(BaseModel):
    """What the task's jobs run, as resolved at registration."""

    transformation: str | None = Field(None, description="null: a raw command (development switch)")
    parameters: dict[str, str] = Field(default_factory=dict)
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class TaskView(BaseModel):
    id: int
    name: str
    type: str
    status: TaskState
    error: str | None
    input_dataset: str
    output_dataset: str
    payload: PayloadView
    resource_type: str
    cores: int
    memory_mb: int
    split: SplitRule
    max_attempts: int
    priority: int
    wfms_request_id: str | None
    owner: str | None = Field(None, description="who submitted it (its token's name): a wfms client changes only "
                              "its own tasks")
    metadata: dict[str, Any]
    files_total: int | None
    files_assigned: int
    jobs_total: int
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class TaskDetail(TaskView):
    """One task with its progress (GET /tasks/{id})."""

    progress: Progress


class TaskRegistered(TaskView):
    """The answer to a submission: the task, and what the WMS could tell about its input at once."""

    input_dataset_found: bool | None = Field(description="whether the input dataset exists in the DSM now (null: "
                                             "the DSM could not say)")
    input_wait_until: dt.datetime | None = Field(description="when the input dataset does not exist yet: the task "
                                                 "waits for it until then (WMS_DATASET_WAIT_S after submission, a "
                                                 "later stage of a chain may be submitted before its input "
                                                 "appears), then fails")
    notes: list[str] = Field(description="what a WFMS should know about this submission (empty: nothing)")


class TaskPage(BaseModel):
    items: list[TaskView]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last page")


class FailureGroup(BaseModel):
    """Failed and lost attempts with one error category and message."""

    error_category: str | None
    error_message: str | None
    attempts: int = Field(description="failed or lost attempts")
    jobs: int = Field(description="jobs with such an attempt")
    jobs_failed: int = Field(description="of these jobs, those that failed for good")
    files: int = Field(description="input files of the jobs that failed for good")
    job_ids: list[int] = Field(description="the first 20 of these jobs")


class DurationStats(BaseModel):
    mean_s: float | None
    min_s: float | None
    max_s: float | None


class TaskReport(BaseModel):
    task_id: int
    status: TaskState
    final: bool = Field(description="true once the task is in a terminal state")
    error: str | None
    input_dataset: str
    output_dataset: str
    files: FileProgress
    jobs: JobCounts
    attempts_total: int
    jobs_retried: int
    wall_time_s: float
    job_run_time: DurationStats
    outputs: OutputTotals
    failures: list[FailureGroup]
    usage: UsageTotals = Field(description="what its payloads used, over every measured attempt")


class FileView(BaseModel):
    id: int
    lfn: str
    dataset: str
    role: FileRole
    job_id: int | None
    url: str | None
    size: int | None
    adler32: str | None
    events: int | None
    status: FileState
    created_at: dt.datetime


class FilePage(BaseModel):
    items: list[FileView]
    next_after: int | None


def task_view(row: Any) -> TaskView:
    m = row._mapping
    return TaskView(
        **{k: m[k] for k in TaskView.model_fields if k in m and k not in ("metadata", "type")},
        type=m["task_type"],
        metadata=m["metadata"],
        split=SplitRule(by=m["split_by"], size=m["split_size"]),
    )


def task_detail(row: Any, progress: Progress) -> TaskDetail:
    return TaskDetail(**task_view(row).model_dump(), progress=progress)


# Operators' views (queue summary, jobs, pilots, explanations, throughput, dead letters).


class QueueLine(BaseModel):
    task_id: int
    name: str
    status: TaskState
    priority: int
    resource_type: str
    queued: int = Field(description="jobs ready or held")
    running: int = Field(description="jobs dispatched or running")
    done: int
    failed: int
    cancelled: int
    files_done: int
    files_assigned: int
    files_total: int | None


class ResourceUse(BaseModel):
    resource_type: str
    slots: int = Field(description="job slots of the live pilots of this type")
    busy: int = Field(description="jobs in flight on them (utilization: busy / slots)")
    ready: int = Field(description="claimable jobs (saturation)")
    oldest_ready_s: float = Field(description="how long the longest-waiting ready job has waited")


class UseSummary(BaseModel):
    """The USE method at a glance: utilization and saturation by resource type, and the errors."""

    resources: list[ResourceUse]
    jobs_failed_last_10_min: int = Field(description="jobs that failed for good in the last 10 minutes")
    dead_letters: int | None = Field(description="messages in the dead-letter queues (None: the broker is down)")


class PurgeRequest(BaseModel):
    """Which ended work to remove: settled tasks (ended, outputs closed in the DSM) with their jobs and file rows,
    and ended pilots and pilot submissions, that ended more than ``older_than_s`` seconds ago."""

    model_config = ConfigDict(extra="forbid")
    older_than_s: float = Field(ge=0, le=100 * 365 * 86400, strict=True,
                                description="age of the ended work to remove, seconds")
    dry_run: bool = Field(False, strict=True, description="only count what would go")
    pilots: bool = Field(True, strict=True, description="ended pilots and pilot submissions too")


class PurgeResult(BaseModel):
    tasks: int
    jobs: int
    files: int = Field(description="FILE_DAT rows of the removed tasks (the DSM keeps its datasets and files)")
    pilots: int
    pilot_submissions: int
    dry_run: bool


class PilotView(BaseModel):
    id: int
    host: str
    resource_type: str
    channel: str
    runtime: str = Field(description="how it runs payloads: sandbox (bubblewrap) or plain")
    cores: int
    memory_mb: int
    gpus: int
    status: str
    current_job_id: int | None
    registered_at: dt.datetime
    heartbeat_at: dt.datetime
    ended_at: dt.datetime | None


USAGE_COLUMNS = ("wall_s", "cpu_s", "max_rss_mb", "max_pss_mb", "read_mb", "written_mb", "max_processes")


class AttemptUsage(BaseModel):
    """What an attempt's payload used, as its pilot measured it (the latest figures while it runs)."""

    wall_s: float
    cpu_s: float
    max_rss_mb: float
    max_pss_mb: float
    read_mb: float
    written_mb: float
    max_processes: int


class AttemptView(BaseModel):
    attempt: int
    pilot_id: int | None
    host: str | None
    pilot_status: str | None
    outcome: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    exit_code: int | None
    error_category: str | None
    error_message: str | None
    usage: AttemptUsage | None = Field(None, description="null until its pilot reported figures")

    @model_validator(mode="before")
    @classmethod
    def _usage_from_columns(cls, row: Any) -> Any:
        """A JOB_ATTEMPT row (with its pilot's host and state) carries the usage figures as columns."""
        values = dict(row) if isinstance(row, dict) else dict(row._mapping)
        if "usage" not in values:
            figures = {name: values.get(name) for name in USAGE_COLUMNS}
            values["usage"] = None if any(v is None for v in figures.values()) else figures
        return values


class UsageTotals(BaseModel):
    """What a task's measured attempts used together."""

    attempts: int = Field(description="attempts with figures")
    cpu_s: float
    wall_s: float
    cpu_efficiency: float | None = Field(description="cpu_s / (wall_s x the task's cores)")
    max_rss_mb: float | None
    max_pss_mb: float | None
    read_mb: float
    written_mb: float


class CommandLine(BaseModel):
    """One line of a task's audit trail: who gave which command, when, and what it did."""

    at: dt.datetime
    actor: str
    role: str
    command: str
    detail: str | None


class Explanation(BaseModel):
    job: JobView
    task_status: TaskState
    max_attempts: int
    reasons: list[str] = Field(description="why the job is where it is, most important first")
    attempts: list[AttemptView]
    log_url: str | None
    log_tail: str | None = Field(description="the end of the last attempt's log, when the log is readable here")
    task_commands: list[CommandLine] = Field(default_factory=list, description="its task's audit trail")


class ThroughputPoint(BaseModel):
    minute: dt.datetime
    jobs: int
    files: int


class DeadLetter(BaseModel):
    queue: str = Field(description="the queue the message was dead-lettered from (without the namespace)")
    message_id: str | None
    routing_key: str | None
    exchange: str | None
    reason: str | None = Field(description="rejected (poison) or delivery_limit (kept failing)")
    dead_lettered_at: dt.datetime | None
    body: str = Field(description="the message body as text (cut at 2,000 characters)")


class ReplayResult(BaseModel):
    queue: str
    message_id: str
    republished_to: str
