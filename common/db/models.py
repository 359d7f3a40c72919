"""SQLAlchemy models of the shared schema. The alembic migrations create exactly these (a test compares them)."""
from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypeAlias, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.states import (
    JOB_MACHINE,
    PILOT_MACHINE,
    SUBMISSION_MACHINE,
    TASK_MACHINE,
    AttemptOutcome,
    FileRole,
    FileState,
    JobState,
    PilotState,
    SubmissionState,
    TaskState,
)

RESOURCE_TYPES = ("cpu", "gpu")
SPLIT_RULES = ("files", "bytes", "events")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in sorted(values))})"


def _now() -> sa.TextClause:
    return sa.text("now()")


Timestamp = sa.DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class Task(Base):
    __tablename__ = "task_dat"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    task_type: Mapped[str] = mapped_column(sa.Text)
    input_dataset: Mapped[str] = mapped_column(sa.Text)
    output_dataset: Mapped[str] = mapped_column(sa.Text)
    # {"command": str, "args": [str], "env": {str: str}, "container_image": str | null}
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    resource_type: Mapped[str] = mapped_column(sa.Text)
    cores: Mapped[int] = mapped_column(sa.Integer)
    memory_mb: Mapped[int] = mapped_column(sa.Integer)
    split_by: Mapped[str] = mapped_column(sa.Text)
    split_size: Mapped[int] = mapped_column(sa.BigInteger)
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    priority: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.Text, server_default=TaskState.REGISTERED.value)
    error: Mapped[str | None] = mapped_column(sa.Text)
    wfms_request_id: Mapped[str | None] = mapped_column(sa.Text, unique=True)
    # sha256 of the canonical description: a request id reused for another description is refused.
    request_hash: Mapped[str] = mapped_column(sa.Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default=sa.text("'{}'::jsonb"))
    # Counters the task-executor keeps while it splits the dataset (file counts of an open dataset are not
    # known in advance, so they cannot be derived from JOB_DAT alone).
    # Set when the dataset is closed and every file is in a job: generation is complete.
    files_total: Mapped[int | None] = mapped_column(sa.BigInteger)
    # The DSM position (file seq) up to which the dataset has been turned into jobs.
    dsm_cursor: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    files_assigned: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    jobs_total: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    # Jobs the job-manager has registered in JOB_DAT; jobs_total - jobs_registered are chunks in flight.
    jobs_registered: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    started_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # When the job-executor closed the output dataset in the DSM (after the task ended and its outputs were
    # registered there).
    output_closed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # Who submitted it (the name of the submitting token, common.auth.Identity): a wfms client changes only its
    # own tasks. Null for tasks submitted before owners existed (operators only).
    owner: Mapped[str | None] = mapped_column(sa.Text)
    # Where its next registered jobs start in the fair dispatch order (common.policies.fair_start).
    dispatch_vt: Mapped[float] = mapped_column(sa.Float, server_default="0")

    __table_args__ = (
        sa.CheckConstraint(_in("status", TASK_MACHINE.states), name="status"),
        sa.CheckConstraint(_in("resource_type", RESOURCE_TYPES), name="resource_type"),
        sa.CheckConstraint(_in("split_by", SPLIT_RULES), name="split_by"),
        sa.CheckConstraint("split_size > 0 AND cores > 0 AND memory_mb > 0 AND max_attempts > 0", name="positive"),
        sa.CheckConstraint("priority BETWEEN 1 AND 1000", name="priority"),
        sa.Index("ix_task_dat_status_id", "status", "id"),
        # The task-executor's work set: active tasks only.
        sa.Index(
            "ix_task_dat_active",
            "id",
            postgresql_where=sa.text(_in("status", sorted(TASK_MACHINE.active))),
        ),
    )


class Pilot(Base):
    __tablename__ = "pilot_dat"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    host: Mapped[str] = mapped_column(sa.Text)
    resource_type: Mapped[str] = mapped_column(sa.Text)
    cores: Mapped[int] = mapped_column(sa.Integer)
    memory_mb: Mapped[int] = mapped_column(sa.Integer)
    gpus: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    # jobs it runs at once (protocol 2), within its cores, memory and GPUs
    slots: Mapped[int] = mapped_column(sa.Integer, server_default="1")
    status: Mapped[str] = mapped_column(sa.Text, server_default=PilotState.IDLE.value)
    version: Mapped[str] = mapped_column(sa.Text)
    # sha256 of the session secret handed out at registration: only this pilot can speak for itself.
    session_hash: Mapped[str] = mapped_column(sa.Text, server_default="")
    channel: Mapped[str] = mapped_column(sa.Text, server_default="rest")
    # how it runs payloads (common.pilot_protocol.PayloadRuntimeName): sandbox or plain
    runtime: Mapped[str] = mapped_column(sa.Text, server_default="plain")
    current_job_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    # the operator-issued credential it registered with (null: a site-wide pilot token of the settings)
    credential_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    # the batch job it runs in (a pilot the factory submitted): the batch system, its job id, and how the batch
    # job ended as the factory saw it (e.g. COMPLETED, CANCELLED, vanished)
    batch_system: Mapped[str | None] = mapped_column(sa.Text)
    batch_job_id: Mapped[str | None] = mapped_column(sa.Text)
    batch_state: Mapped[str | None] = mapped_column(sa.Text)
    registered_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    heartbeat_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    ended_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        sa.CheckConstraint(_in("status", PILOT_MACHINE.states), name="status"),
        sa.CheckConstraint(_in("resource_type", RESOURCE_TYPES), name="resource_type"),
        # The dead-pilot sweep reads live pilots by heartbeat age.
        sa.Index(
            "ix_pilot_dat_live_heartbeat",
            "heartbeat_at",
            postgresql_where=sa.text(_in("status", sorted(PILOT_MACHINE.active))),
        ),
        # The factory finds the pilot of a batch job that ended.
        sa.Index("ix_pilot_dat_batch_job", "batch_system", "batch_job_id",
                 postgresql_where=sa.text("batch_job_id IS NOT NULL")),
    )


class PilotSubmission(Base):
    """A pilot the factory submitted (or is about to submit) to a batch system for one of its queues."""

    __tablename__ = "pilot_submission"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    queue: Mapped[str] = mapped_column(sa.Text)  # the factory's site queue (its configuration names it)
    resource_type: Mapped[str] = mapped_column(sa.Text)
    batch_system: Mapped[str] = mapped_column(sa.Text)
    # the batch job's name: how a restarted factory finds a submission whose job id it never recorded
    batch_name: Mapped[str] = mapped_column(sa.Text, unique=True)
    batch_job_id: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.Text, server_default=SubmissionState.INTENDED.value)
    batch_state: Mapped[str | None] = mapped_column(sa.Text)  # the batch system's last word on it
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    submitted_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    started_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    ended_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        sa.CheckConstraint(_in("status", SUBMISSION_MACHINE.states), name="status"),
        sa.CheckConstraint(_in("resource_type", RESOURCE_TYPES), name="resource_type"),
        sa.Index("ix_pilot_submission_live", "queue", "status",
                 postgresql_where=sa.text(_in("status", sorted(SUBMISSION_MACHINE.active)))),
    )


class PilotCredential(Base):
    """A pilot (or node) credential issued by an operator: only the sha256 of its token is kept; it may register
    pilots of one resource type, up to max_cores/max_gpus, on hosts matching host_pattern (a shell glob)."""

    __tablename__ = "pilot_credential"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text)
    token_sha256: Mapped[str] = mapped_column(sa.Text, unique=True)
    resource_type: Mapped[str] = mapped_column(sa.Text)
    max_cores: Mapped[int] = mapped_column(sa.Integer)
    max_gpus: Mapped[int] = mapped_column(sa.Integer)
    host_pattern: Mapped[str] = mapped_column(sa.Text)  # a label: the pilot says its host name itself
    # the network its pilots' connections must come from (what the job-executor sees, not what the pilot says);
    # null: any
    network: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        sa.CheckConstraint(_in("resource_type", RESOURCE_TYPES), name="resource_type"),
        sa.CheckConstraint("max_cores > 0 AND max_gpus >= 0 AND (resource_type = 'gpu' OR max_gpus = 0)",
                           name="limits"),
    )


class Job(Base):
    __tablename__ = "job_dat"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("task_dat.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(sa.Text, server_default=JobState.READY.value)
    attempt: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    resource_type: Mapped[str] = mapped_column(sa.Text)
    priority: Mapped[int] = mapped_column(sa.Integer)
    pilot_id: Mapped[int | None] = mapped_column(sa.ForeignKey("pilot_dat.id", ondelete="SET NULL"))
    n_files: Mapped[int] = mapped_column(sa.Integer)
    n_bytes: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    n_events: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    queued_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    started_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    error_category: Mapped[str | None] = mapped_column(sa.Text)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    # A retried job waits for its backoff before it can be claimed again.
    not_before: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    # The pilot-chosen id of the claim that produced the current attempt: a retried (REST) or redelivered (MQ)
    # claim with the same id gets this attempt again instead of a second job.
    claim_request_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # Attempts lost to infrastructure (dead pilot, silent heartbeat): counted apart from payload failures, with
    # their own limit (WMS_MAX_LOST_ATTEMPTS); ``attempt - lost_attempts`` is what max_attempts bounds.
    lost_attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    # Its place in the claim order: a virtual finish time (common.policies.fair_keys), set at registration.
    dispatch_key: Mapped[float] = mapped_column(sa.Float, server_default="0")

    __table_args__ = (
        sa.CheckConstraint(_in("status", JOB_MACHINE.states), name="status"),
        sa.CheckConstraint(_in("resource_type", RESOURCE_TYPES), name="resource_type"),
        sa.Index("ix_job_dat_task_status", "task_id", "status"),
        # Dispatch: the ready jobs of a resource type in fair-share order (common.policies.fair_keys).
        sa.Index(
            "ix_job_dat_ready",
            "resource_type",
            "dispatch_key",
            "id",
            postgresql_where=sa.text(f"status = '{JobState.READY}'"),
        ),
        # Oversight: jobs held by pilots, by heartbeat age.
        sa.Index(
            "ix_job_dat_in_flight_heartbeat",
            "heartbeat_at",
            postgresql_where=sa.text(_in("status", [JobState.DISPATCHED, JobState.RUNNING])),
        ),
        # Controlled loading: jobs generated but not yet dispatched, per resource type.
        sa.Index(
            "ix_job_dat_backlog",
            "resource_type",
            postgresql_where=sa.text(_in("status", [JobState.READY, JobState.HELD])),
        ),
        sa.Index(
            "ix_job_dat_pilot",
            "pilot_id",
            postgresql_where=sa.text("pilot_id IS NOT NULL"),
        ),
        # Exchanges: a pilot's jobs in flight (its load, its heartbeats), whatever its history.
        sa.Index(
            "ix_job_dat_pilot_in_flight",
            "pilot_id",
            postgresql_where=sa.text(_in("status", [JobState.DISPATCHED, JobState.RUNNING])),
        ),
        # Monitoring: jobs finished in the last minutes (throughput plot, rates) without a scan of JOB_DAT.
        sa.Index(
            "ix_job_dat_finished_at",
            "finished_at",
            postgresql_where=sa.text(f"status = '{JobState.FINISHED}'"),
        ),
    )


class JobAttempt(Base):
    """Every attempt of a job: which pilot, when, and how it ended."""

    __tablename__ = "job_attempt"

    job_id: Mapped[int] = mapped_column(sa.ForeignKey("job_dat.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    pilot_id: Mapped[int | None] = mapped_column(sa.ForeignKey("pilot_dat.id", ondelete="SET NULL"))
    outcome: Mapped[str] = mapped_column(sa.Text, server_default=AttemptOutcome.RUNNING.value)
    started_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    error_category: Mapped[str | None] = mapped_column(sa.Text)
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    # What the payload used, as its pilot measured it (common.pilot_protocol.Usage): the latest figures while it
    # runs, the final ones once it ended.
    wall_s: Mapped[float | None] = mapped_column(sa.Float)
    cpu_s: Mapped[float | None] = mapped_column(sa.Float)
    max_rss_mb: Mapped[float | None] = mapped_column(sa.Float)
    max_pss_mb: Mapped[float | None] = mapped_column(sa.Float)
    read_mb: Mapped[float | None] = mapped_column(sa.Float)
    written_mb: Mapped[float | None] = mapped_column(sa.Float)
    max_processes: Mapped[int | None] = mapped_column(sa.Integer)

    __table_args__ = (
        sa.CheckConstraint(_in("outcome", list(AttemptOutcome)), name="outcome"),
    )


class File(Base):
    __tablename__ = "file_dat"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    lfn: Mapped[str] = mapped_column(sa.Text)
    dataset: Mapped[str] = mapped_column(sa.Text)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("task_dat.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("job_dat.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(sa.Text)
    url: Mapped[str | None] = mapped_column(sa.Text)
    size: Mapped[int | None] = mapped_column(sa.BigInteger)
    adler32: Mapped[str | None] = mapped_column(sa.String(8))
    events: Mapped[int | None] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    # DSM registration of a staged output: after a transient DSM error it waits (backoff) so it never blocks
    # the rows behind it; a permanent refusal makes it 'rejected' with the DSM's reason here.
    register_after: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    register_attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(sa.Text)

    __table_args__ = (
        sa.CheckConstraint(_in("role", list(FileRole)), name="role"),
        sa.CheckConstraint(_in("status", list(FileState)), name="status"),
        sa.CheckConstraint("adler32 ~ '^[0-9a-f]{8}$'", name="adler32_hex"),
        # Every input file is in exactly one job of its task: a duplicate cannot be written.
        sa.Index(
            "uq_file_dat_task_input_lfn",
            "task_id",
            "lfn",
            unique=True,
            postgresql_where=sa.text(f"role = '{FileRole.INPUT}'"),
        ),
        # An output or log is registered once in its dataset, however often the final report arrives.
        sa.Index(
            "uq_file_dat_dataset_output_lfn",
            "dataset",
            "lfn",
            unique=True,
            postgresql_where=sa.text(f"role <> '{FileRole.INPUT}'"),
        ),
        sa.Index("ix_file_dat_job", "job_id"),
        sa.Index("ix_file_dat_lfn", "lfn"),
        sa.Index("ix_file_dat_task_role_id", "task_id", "role", "id"),
        # The DSM registrar's work: outputs and logs on storage, not yet in the DSM.
        sa.Index("ix_file_dat_staged", "id", postgresql_where=sa.text(f"status = '{FileState.STAGED}'")),
    )


class OutboxMessage(Base):
    """Events written in the same transaction as the change they announce; a relay publishes them."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    exchange: Mapped[str] = mapped_column(sa.Text)
    routing_key: Mapped[str] = mapped_column(sa.Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    published_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)
    publish_attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    # A row whose publication failed waits for its backoff; the rows behind it go out meanwhile.
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(Timestamp)

    __table_args__ = (
        sa.Index("ix_outbox_unpublished", "id", postgresql_where=sa.text("published_at IS NULL")),
    )


class ConsumedMessage(Base):
    """Message ids a consumer has applied: redeliveries are recognised and skipped (idempotent consumers)."""

    __tablename__ = "consumed_message"

    consumer: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    consumed_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())

    # Housekeeping purges ids older than the retention (WMS_CONSUMED_MESSAGE_RETENTION_S).
    __table_args__ = (sa.Index("ix_consumed_message_consumed_at", "consumed_at"),)


class LoadSample(Base):
    """The ready backlog and the live pilots' slots by resource type, sampled by the job-executor's telemetry every
    WMS_METRICS_INTERVAL_S: what the monitor plots over time (purged after WMS_LOAD_SAMPLE_RETENTION_S)."""

    __tablename__ = "load_sample"

    sampled_at: Mapped[dt.datetime] = mapped_column(Timestamp, primary_key=True)
    resource_type: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    ready: Mapped[int] = mapped_column(sa.Integer)
    slots: Mapped[int] = mapped_column(sa.Integer)
    busy: Mapped[int] = mapped_column(sa.Integer)


class TaskCommand(Base):
    """The audit trail of tasks: every command (submit, cancel, pause, resume, reprioritise), who gave it, when,
    and what it did; written in the command's own transaction, removed with its task."""

    __tablename__ = "task_command"

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("task_dat.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=_now())
    actor: Mapped[str] = mapped_column(sa.Text)
    role: Mapped[str] = mapped_column(sa.Text)
    command: Mapped[str] = mapped_column(sa.Text)
    detail: Mapped[str | None] = mapped_column(sa.Text)


metadata = Base.metadata
# A row of any query (SQLAlchemy 2 types rows by their columns; the services pass them around untyped).
Record: TypeAlias = sa.Row[*tuple[Any, ...]]

# The tables, for SQLAlchemy Core (a declarative class's __table__ is typed as a mere FromClause).
tasks = cast(sa.Table, Task.__table__)
jobs = cast(sa.Table, Job.__table__)
pilots = cast(sa.Table, Pilot.__table__)
files = cast(sa.Table, File.__table__)
outbox = cast(sa.Table, OutboxMessage.__table__)
consumed_messages = cast(sa.Table, ConsumedMessage.__table__)
job_attempts = cast(sa.Table, JobAttempt.__table__)
pilot_credentials = cast(sa.Table, PilotCredential.__table__)
pilot_submissions = cast(sa.Table, PilotSubmission.__table__)
load_samples = cast(sa.Table, LoadSample.__table__)
task_commands = cast(sa.Table, TaskCommand.__table__)
