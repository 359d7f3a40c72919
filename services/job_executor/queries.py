"""The job-executor's SQL: every state change here is one guarded statement."""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.models import (
    Record,
    consumed_messages,
    files,
    job_attempts,
    jobs,
    load_samples,
    pilot_credentials,
    pilots,
    tasks,
)
from common.db.transitions import guarded_transition, guarded_update, may_move, may_move_sql
from common.states import (
    JOB_MACHINE,
    JOBS_IN_FLIGHT,
    PILOT_MACHINE,
    TASK_MACHINE,
    AttemptOutcome,
    FileRole,
    FileState,
    JobState,
    PilotState,
    TaskState,
)

LIVE = (PilotState.IDLE, PilotState.BUSY)


async def insert_pilot(conn: AsyncConnection, values: dict[str, Any]) -> int:
    return int((await conn.execute(sa.insert(pilots).values(**values).returning(pilots.c.id))).scalar_one())


async def select_pilot(conn: AsyncConnection, pilot_id: int) -> Record | None:
    return (await conn.execute(sa.select(pilots).where(pilots.c.id == pilot_id))).first()


async def end_pilot(conn: AsyncConnection, pilot_id: int, end: PilotState = PilotState.EXITED) -> None:
    """The pilot ended: exited (it said so) or dead (its daemon said its application died); nothing if it had
    ended already."""
    await conn.execute(
        sa.update(pilots)
        .where(pilots.c.id == pilot_id, may_move(pilots.c.status, PILOT_MACHINE, end))
        .values(status=end, ended_at=sa.func.now(), current_job_id=None)
    )


async def end_attempts(conn: AsyncConnection, keys: list[tuple[int, int]], outcome: str, exit_code: int | None,
                       category: str | None, message: str | None) -> None:
    if not keys:
        return
    await conn.execute(
        sa.update(job_attempts)
        .where(sa.tuple_(job_attempts.c.job_id, job_attempts.c.attempt).in_(keys),
               job_attempts.c.outcome == AttemptOutcome.RUNNING)
        .values(outcome=outcome, finished_at=sa.func.now(), exit_code=exit_code, error_category=category,
                error_message=message)
    )


def _fenced(job_id: int, attempt: int, pilot_id: int) -> list[sa.ColumnElement[bool]]:
    """Only the pilot holding the current attempt may change the job."""
    return [jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.pilot_id == pilot_id]


async def _move_job(conn: AsyncConnection, where: list[sa.ColumnElement[bool]], target: JobState,
                    values: dict[str, Any]) -> list[Record]:
    stmt = (
        sa.update(jobs)
        .where(*where, may_move(jobs.c.status, JOB_MACHINE, target))
        .values(status=target, **values)
        .returning(jobs.c.id, jobs.c.attempt, jobs.c.task_id)
    )
    return list((await conn.execute(stmt)).all())


RETRY_FACTS = (jobs.c.id, jobs.c.attempt, jobs.c.lost_attempts, jobs.c.task_id,
               jobs.c.error_category.label("previous_category"),
               sa.select(tasks.c.max_attempts).where(tasks.c.id == jobs.c.task_id).scalar_subquery()
               .label("max_attempts"))


async def attempt_in_flight(conn: AsyncConnection, job_id: int, attempt: int, pilot_id: int) -> list[Record]:
    """The job, if this pilot holds this attempt of it in flight (with what the retry policy needs), locked."""
    stmt = sa.select(*RETRY_FACTS).where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.pilot_id == pilot_id,
                                         jobs.c.status.in_(JOBS_IN_FLIGHT)).with_for_update()
    return list((await conn.execute(stmt)).all())


async def in_flight_of_pilot(conn: AsyncConnection, pilot_id: int) -> list[Record]:
    """The pilot's jobs in flight (with what the retry policy needs), locked."""
    stmt = sa.select(*RETRY_FACTS).where(jobs.c.pilot_id == pilot_id, jobs.c.status.in_(JOBS_IN_FLIGHT)
                                         ).with_for_update()
    return list((await conn.execute(stmt)).all())


async def lost_in_flight(conn: AsyncConnection, timeout_s: float) -> list[Record]:
    """In-flight jobs whose pilot is dead (declared by this sweep, or by the pilot factory when its batch job
    ended), or whose own heartbeat stopped (with what the retry policy needs)."""
    stale = jobs.c.heartbeat_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, timeout_s)
    pilot_dead = sa.exists().where(pilots.c.id == jobs.c.pilot_id, pilots.c.status == PilotState.DEAD)
    stmt = sa.select(*RETRY_FACTS).where(jobs.c.status.in_(JOBS_IN_FLIGHT), sa.or_(pilot_dead, stale)).with_for_update(
        of=jobs)
    return list((await conn.execute(stmt)).all())


async def overrun_in_flight(conn: AsyncConnection, default_wall_time_s: int, grace_s: float,
                            prefetch: Mapping[str, int]) -> list[Record]:
    """In-flight jobs past their task's wall time (payload.wall_time_s, else the default) plus ``grace_s`` (with
    what the retry policy needs), locked. A running job's wall time counts from its start; a dispatched one (staging
    in, or prefetched and waiting for a slot on its pilot's node) is given ``prefetch`` + 1 wall times from its
    dispatch, ``prefetch`` being its queue's."""
    wall_time = sa.func.coalesce(sa.cast(tasks.c.payload["wall_time_s"].astext, sa.Float), default_wall_time_s)
    limit = sa.select(wall_time).where(tasks.c.id == jobs.c.task_id).scalar_subquery()
    waits = sa.case(*((jobs.c.resource_type == queue, depth + 1) for queue, depth in sorted(prefetch.items())),
                    else_=1) if prefetch else sa.literal(1)
    since = sa.func.now() - jobs.c.started_at
    stmt = sa.select(*RETRY_FACTS).where(
        jobs.c.status.in_(JOBS_IN_FLIGHT),
        sa.or_(sa.and_(jobs.c.status == JobState.RUNNING,
                       since > sa.func.make_interval(0, 0, 0, 0, 0, 0, limit + grace_s)),
               sa.and_(jobs.c.status != JobState.RUNNING,
                       since > sa.func.make_interval(0, 0, 0, 0, 0, 0, limit * waits + grace_s))),
    ).with_for_update()
    return list((await conn.execute(stmt)).all())


def _moved_from(target: JobState) -> str:
    return may_move_sql(JOB_MACHINE, target, only_from=JOBS_IN_FLIGHT)


REQUEUE = sa.text(f"""
    UPDATE job_dat AS j
       SET status = '{JobState.READY}', pilot_id = NULL, lost_attempts = r.lost,
           not_before = now() + make_interval(secs => r.backoff),
           error_category = :category, error_message = :message, exit_code = :exit_code
      FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[]), CAST(:lost AS integer[]),
                  CAST(:backoff AS double precision[])) AS r(id, attempt, lost, backoff)
     WHERE j.id = r.id AND j.attempt = r.attempt AND j.status IN ({_moved_from(JobState.READY)})
 RETURNING j.id, j.attempt, j.task_id""")

FAIL = sa.text(f"""
    UPDATE job_dat AS j
       SET status = '{JobState.FAILED}', lost_attempts = r.lost, finished_at = now(),
           error_category = :category, error_message = :message, exit_code = :exit_code
      FROM unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[]), CAST(:lost AS integer[]))
           AS r(id, attempt, lost)
     WHERE j.id = r.id AND j.attempt = r.attempt AND j.status IN ({_moved_from(JobState.FAILED)})
 RETURNING j.id, j.attempt, j.task_id""")


async def requeue_jobs(conn: AsyncConnection, requeued: list[tuple[int, int, int, float]], category: str,
                       message: str | None, exit_code: int | None) -> list[Record]:
    """(job id, attempt, lost attempts, backoff s): back to ready after the backoff, in one statement; only
    jobs still at that attempt and in flight move."""
    if not requeued:
        return []
    ids, attempts, lost, backoff = (list(c) for c in zip(*requeued, strict=True))
    return list((await conn.execute(REQUEUE, {"ids": ids, "attempts": attempts, "lost": lost, "backoff": backoff,
                                              "category": category, "message": message,
                                              "exit_code": exit_code})).all())


async def fail_jobs(conn: AsyncConnection, failing: list[tuple[int, int, int]], category: str,
                    message: str | None, exit_code: int | None) -> list[Record]:
    """(job id, attempt, lost attempts): failed, with their input files, in two statements."""
    if not failing:
        return []
    ids, attempts, lost = (list(c) for c in zip(*failing, strict=True))
    failed = list((await conn.execute(FAIL, {"ids": ids, "attempts": attempts, "lost": lost, "category": category,
                                             "message": message, "exit_code": exit_code})).all())
    if failed:
        await set_input_files(conn, [r.id for r in failed], FileState.FAILED)
    return failed


async def cancel_task_leftovers(conn: AsyncConnection, task_id: int) -> None:
    """After a task's jobs were cancelled: its pending input files are cancelled and its running attempts end
    (two statements by task, whatever the number of jobs)."""
    await conn.execute(
        sa.update(files)
        .where(files.c.task_id == task_id, files.c.role == FileRole.INPUT, files.c.status == FileState.PENDING)
        .values(status=FileState.CANCELLED, updated_at=sa.func.now())
    )
    await conn.execute(
        sa.update(job_attempts)
        .where(job_attempts.c.outcome == AttemptOutcome.RUNNING,
               job_attempts.c.job_id.in_(sa.select(jobs.c.id).where(jobs.c.task_id == task_id)))
        .values(outcome=AttemptOutcome.CANCELLED, finished_at=sa.func.now(), error_category="cancelled",
                error_message="task cancelled")
    )


async def set_input_files(conn: AsyncConnection, job_ids: list[int], state: FileState) -> None:
    await conn.execute(
        sa.update(files)
        .where(files.c.job_id.in_(job_ids), files.c.role == FileRole.INPUT)
        .values(status=state, updated_at=sa.func.now())
    )


async def insert_staged_files(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Outputs and logs; an lfn already registered in the dataset (a repeated final report) is skipped."""
    if rows:
        await conn.execute(insert(files).on_conflict_do_nothing(), rows)


async def declare_dead_pilots(conn: AsyncConnection, timeout_s: float) -> list[int]:
    stmt = (
        sa.update(pilots)
        .where(
            may_move(pilots.c.status, PILOT_MACHINE, PilotState.DEAD),
            pilots.c.heartbeat_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, timeout_s),
        )
        .values(status=PilotState.DEAD, ended_at=sa.func.now(), current_job_id=None)
        .returning(pilots.c.id)
    )
    return [r.id for r in (await conn.execute(stmt)).all()]


async def lock_task(conn: AsyncConnection, task_id: int) -> Record | None:
    """The task's row, locked until commit: task commands reconcile one at a time, each against the latest
    state (a command committed meanwhile waits, and its own reconciliation runs after)."""
    stmt = sa.select(tasks.c.id, tasks.c.status, tasks.c.priority).where(tasks.c.id == task_id).with_for_update()
    return (await conn.execute(stmt)).first()


async def staged_files_due(conn: AsyncConnection, limit: int) -> list[Record]:
    """Staged outputs and logs whose DSM registration is due (not waiting for a backoff), locked (SKIP LOCKED:
    another replica takes other rows)."""
    stmt = (
        sa.select(files.c.id, files.c.task_id, files.c.dataset, files.c.lfn, files.c.url, files.c.size,
                  files.c.adler32, files.c.events, files.c.register_attempts)
        .where(files.c.status == FileState.STAGED,
               sa.or_(files.c.register_after.is_(None), files.c.register_after <= sa.func.now()))
        .order_by(files.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await conn.execute(stmt)).all())


async def mark_files_registered(conn: AsyncConnection, file_ids: list[int]) -> None:
    if file_ids:
        await conn.execute(sa.update(files).where(files.c.id.in_(file_ids), files.c.status == FileState.STAGED)
                           .values(status=FileState.REGISTERED, updated_at=sa.func.now(), error=None))


async def defer_registration(conn: AsyncConnection, file_ids: list[int], error: str, max_s: float) -> None:
    """The DSM was unavailable for these files: try them again after 2^attempts s (capped)."""
    if file_ids:
        backoff = sa.func.least(sa.func.power(2, files.c.register_attempts), max_s)
        await conn.execute(
            sa.update(files).where(files.c.id.in_(file_ids))
            .values(register_attempts=files.c.register_attempts + 1, error=error,
                    register_after=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, backoff))
        )


async def reject_files(conn: AsyncConnection, rejected: list[tuple[int, int, str]]) -> None:
    """(file id, task id, reason): the DSM refused these for good. The files keep the reason; their task keeps
    the first one (it ends failed with it)."""
    if not rejected:
        return
    await conn.execute(
        sa.update(files).where(files.c.id == sa.bindparam("file_id"))
        .values(status=FileState.REJECTED, error=sa.bindparam("reason"), updated_at=sa.func.now()),
        [{"file_id": f, "reason": reason} for f, _, reason in rejected],
    )
    first_by_task: dict[int, str] = {}
    for _, task_id, reason in rejected:
        first_by_task.setdefault(task_id, reason)
    await conn.execute(
        sa.update(tasks).where(tasks.c.id == sa.bindparam("task_id"), tasks.c.error.is_(None))
        .values(error=sa.bindparam("reason"), updated_at=sa.func.now()),
        [{"task_id": t, "reason": f"an output was refused: {r}"} for t, r in first_by_task.items()],
    )


async def mark_output_closed(conn: AsyncConnection, task_id: int) -> None:
    await conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(output_closed_at=sa.func.now()))


async def purge_consumed_messages(conn: AsyncConnection, older_than_s: float) -> int:
    stmt = sa.delete(consumed_messages).where(
        consumed_messages.c.consumed_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
    return (await conn.execute(stmt)).rowcount


async def record_load(conn: AsyncConnection, samples: list[dict[str, Any]]) -> None:
    """One load sample per resource type, stamped with this transaction's time."""
    await conn.execute(sa.insert(load_samples).values(sampled_at=sa.func.now()), samples)


async def purge_load_samples(conn: AsyncConnection, older_than_s: float) -> int:
    stmt = sa.delete(load_samples).where(
        load_samples.c.sampled_at < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
    return (await conn.execute(stmt)).rowcount


async def tasks_settled_or_not(conn: AsyncConnection) -> tuple[list[int], list[int]]:
    """(settled, unsettled) task ids: a settled task ended and closed its outputs, so its jobs no longer change."""
    settled = sa.and_(tasks.c.status.in_(sorted(TASK_MACHINE.terminal)), tasks.c.output_closed_at.is_not(None))
    rows = (await conn.execute(sa.select(tasks.c.id, settled.label("settled")))).all()
    return [r.id for r in rows if r.settled], [r.id for r in rows if not r.settled]


async def count_jobs_of_tasks(conn: AsyncConnection, task_ids: list[int]) -> dict[int, dict[tuple[str, str], int]]:
    """task id -> (state, resource type) -> jobs (ix_job_dat_task_status: only these tasks' jobs are read)."""
    found: dict[int, dict[tuple[str, str], int]] = {task_id: {} for task_id in task_ids}
    if task_ids:
        rows = await conn.execute(sa.select(jobs.c.task_id, jobs.c.status, jobs.c.resource_type, sa.func.count())
                                  .where(jobs.c.task_id.in_(task_ids))
                                  .group_by(jobs.c.task_id, jobs.c.status, jobs.c.resource_type))
        for task_id, status, resource_type, n in rows.all():
            found[task_id][(status, resource_type)] = n
    return found


async def count_live_pilots_by_type_and_channel(conn: AsyncConnection) -> dict[tuple[str, str], int]:
    rows = await conn.execute(sa.select(pilots.c.resource_type, pilots.c.channel, sa.func.count())
                              .where(pilots.c.status.in_(sorted(PILOT_MACHINE.active)))
                              .group_by(pilots.c.resource_type, pilots.c.channel))
    return {(resource_type, channel): n for resource_type, channel, n in rows.all()}


async def try_lead(conn: AsyncConnection, lock: int) -> bool:
    """Whether this transaction leads the sweep ``lock`` names (one replica at a time; released at commit)."""
    return bool((await conn.execute(sa.select(sa.func.pg_try_advisory_xact_lock(lock)))).scalar())


async def cancel_task_jobs(conn: AsyncConnection, task_id: int) -> None:
    """Every not-ended job of the task cancelled, its pending inputs too and its running attempts ended: a few
    statements by task, whatever the number of jobs (no RETURNING: no ids shipped around)."""
    cancel = guarded_update(jobs, JOB_MACHINE, jobs.c.task_id == task_id, JobState.CANCELLED,
                            {"finished_at": sa.func.now(), "error_category": "cancelled"})
    assert cancel is not None  # every active job state may become cancelled
    await conn.execute(cancel)
    await cancel_task_leftovers(conn, task_id)


async def move_queued_jobs(conn: AsyncConnection, task_id: int, target: JobState, only_from: list[JobState]) -> None:
    """The task's queued jobs to ``target`` (held <-> ready), in one guarded statement."""
    await guarded_transition(conn, jobs, JOB_MACHINE, jobs.c.task_id == task_id, target, only_from=only_from)


# A task's new priority: its queued jobs take it and new dispatch keys (common.policies.fair_keys) from the first
# ready key of their type on, in their old order; the task's virtual time follows them.
_REKEY = sa.text(f"""
    WITH current AS (
        SELECT coalesce((SELECT min(dispatch_key) FROM job_dat
                          WHERE status = '{JobState.READY}' AND resource_type = t.resource_type), t.dispatch_vt) AS vt
          FROM task_dat t WHERE t.id = :task),
    ranked AS (
        SELECT id, row_number() OVER (ORDER BY dispatch_key, id) AS rank FROM job_dat
         WHERE task_id = :task AND status IN ('{JobState.READY}', '{JobState.HELD}')),
    rekeyed AS (
        UPDATE job_dat j SET priority = CAST(:priority AS integer),
               dispatch_key = current.vt + ranked.rank::float8 / CAST(:priority AS integer)
          FROM ranked, current WHERE j.id = ranked.id
        RETURNING j.dispatch_key)
    UPDATE task_dat SET dispatch_vt = (SELECT coalesce(max(dispatch_key), (SELECT vt FROM current)) FROM rekeyed)
     WHERE id = :task""")


async def set_queued_jobs_priority(conn: AsyncConnection, task_id: int, priority: int) -> None:
    await conn.execute(_REKEY, {"task": task_id, "priority": priority})


async def tasks_ready_to_end(conn: AsyncConnection) -> list[Record]:
    """(id, input_dataset, files_total, any_failed, any_rejected, any_finished) of each running task whose dataset
    is fully in jobs, whose jobs all ended and whose outputs are all in the DSM or refused there ('done' means
    usable downstream)."""
    unfinished = sa.exists().where(jobs.c.task_id == tasks.c.id, jobs.c.status.in_(sorted(JOB_MACHINE.active)))
    any_failed = sa.exists().where(jobs.c.task_id == tasks.c.id, jobs.c.status == JobState.FAILED)
    any_finished = sa.exists().where(jobs.c.task_id == tasks.c.id, jobs.c.status == JobState.FINISHED)
    any_staged = sa.exists().where(files.c.task_id == tasks.c.id, files.c.status == FileState.STAGED)
    any_rejected = sa.exists().where(files.c.task_id == tasks.c.id, files.c.status == FileState.REJECTED)
    stmt = sa.select(tasks.c.id, tasks.c.input_dataset, tasks.c.files_total, any_failed.label("any_failed"),
                     any_rejected.label("any_rejected"), any_finished.label("any_finished")).where(
        tasks.c.status == TaskState.RUNNING,
        tasks.c.files_total.is_not(None),
        tasks.c.jobs_registered == tasks.c.jobs_total,
        ~unfinished,
        ~any_staged,
    )
    return list((await conn.execute(stmt)).all())


async def set_task_errors(conn: AsyncConnection, errors: dict[int, str]) -> None:
    """Say why a task ended as it did (a reason already recorded is kept)."""
    if errors:
        await conn.execute(
            sa.update(tasks).where(tasks.c.id == sa.bindparam("task_id"), tasks.c.error.is_(None))
            .values(error=sa.bindparam("reason"), updated_at=sa.func.now()),
            [{"task_id": t, "reason": r} for t, r in errors.items()])


async def end_tasks(conn: AsyncConnection, task_ids: list[int], target: TaskState) -> list[Record]:
    """Running tasks to ``target`` (done, finished, failed), guarded; the moved rows (for their events)."""
    return await guarded_transition(
        conn, tasks, TASK_MACHINE, task_ids, target, {"finished_at": sa.func.now(), "updated_at": sa.func.now()},
        returning=(tasks.c.id, tasks.c.status, tasks.c.priority, tasks.c.resource_type),
    )


async def ended_tasks_with_open_outputs(conn: AsyncConnection) -> list[tuple[int, str, bool]]:
    """(task id, output dataset, whether it ever started) of ended tasks whose outputs are all registered and not
    yet closed."""
    staged = sa.exists().where(files.c.task_id == tasks.c.id, files.c.status == FileState.STAGED)
    stmt = sa.select(tasks.c.id, tasks.c.output_dataset, tasks.c.started_at.is_not(None)).where(
        tasks.c.status.in_(sorted(TASK_MACHINE.terminal)), tasks.c.output_closed_at.is_(None), ~staged)
    return [(task_id, dataset, bool(started)) for task_id, dataset, started in (await conn.execute(stmt)).all()]


# --- protocol 2: one exchange per pilot cycle, every kind of change in one statement -------------------------

async def jobs_claimed_by_request(conn: AsyncConnection, pilot_id: int, request_id: uuid.UUID) -> list[Record]:
    """The attempts a claim or exchange ``request_id`` produced that the pilot still holds (its retry gets them
    back instead of more jobs)."""
    stmt = sa.select(jobs.c.id, jobs.c.attempt, jobs.c.task_id, jobs.c.error_category.label("last_error"),
                     jobs.c.resource_type).where(
        jobs.c.pilot_id == pilot_id, jobs.c.claim_request_id == request_id, jobs.c.status.in_(JOBS_IN_FLIGHT))
    return list((await conn.execute(stmt)).all())


async def task_contexts(conn: AsyncConnection, task_ids: list[int]) -> dict[int, Record]:
    rows = await conn.execute(sa.select(tasks.c.id, tasks.c.payload, tasks.c.output_dataset, tasks.c.cores,
                                        tasks.c.memory_mb).where(tasks.c.id.in_(task_ids)))
    return {r.id: r for r in rows.all()}


async def output_datasets_of(conn: AsyncConnection, job_ids: list[int]) -> dict[int, tuple[int, str]]:
    """job id -> (task id, output dataset)."""
    rows = await conn.execute(sa.select(jobs.c.id, tasks.c.id, tasks.c.output_dataset)
                              .join(tasks, tasks.c.id == jobs.c.task_id).where(jobs.c.id.in_(job_ids)))
    return {job_id: (task_id, dataset) for job_id, task_id, dataset in rows.all()}


async def select_jobs(conn: AsyncConnection, job_ids: list[int]) -> dict[int, Record]:
    rows = await conn.execute(sa.select(jobs.c.id, jobs.c.status, jobs.c.attempt, jobs.c.pilot_id)
                              .where(jobs.c.id.in_(job_ids)))
    return {r.id: r for r in rows.all()}


async def ready_generation(conn: AsyncConnection) -> Any:
    """Changes whenever a job becomes claimable (queued, requeued, or out of its backoff): long-polling claims
    wake on a change. Reads the ready jobs only (a partial index keeps them)."""
    stmt = sa.select(sa.func.count(), sa.func.max(sa.func.greatest(jobs.c.queued_at, jobs.c.not_before))).where(
        jobs.c.status == JobState.READY, sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= sa.func.now()))
    return tuple((await conn.execute(stmt)).one())


async def live_credential(conn: AsyncConnection, token_sha256: str) -> Record | None:
    """The unrevoked pilot credential whose token has this digest."""
    stmt = sa.select(pilot_credentials).where(pilot_credentials.c.token_sha256 == token_sha256,
                                              pilot_credentials.c.revoked_at.is_(None))
    return (await conn.execute(stmt)).first()
