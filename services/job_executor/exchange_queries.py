"""The exchange's hot statements (docs/dispatch.md, protocol 2), as SQL text built once at import and run on the
transaction's asyncpg connection directly.

Every exchange runs these, so they cost what the rest of the job-executor does not: built with the expression
language they spent most of the service's CPU on statement construction and cache keys, and even as text through
SQLAlchemy on its execution and result layers (docs/benchmarks.md). Here each is a constant text with positional
parameters, prepared once per connection by asyncpg (its statement cache) and run without SQLAlchemy, inside the
transaction SQLAlchemy opened (common.db.session.driver_connection); keys travel as arrays (unnest), so one
statement serves any number of jobs; a claim locks, trims to what fits, dispatches, opens the attempts and reads
the inputs in one statement; a finish ends the jobs, their attempts and their input files in one.

The state machines still guard every write: each UPDATE names the allowed source states, taken from
``JOB_MACHINE`` (and the pilots' live states), so concurrent writers can never make a forbidden move. State names
are SQL literals (constants of the machines): a generic plan then still uses the partial indexes (ready jobs,
jobs in flight) whose predicates name them, where a parameter would make it scan JOB_DAT.
"""
from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from common.db.session import driver_connection
from common.db.transitions import may_move_sql
from common.policies import TASK_STATES_WHOSE_JOBS_PROCEED
from common.states import (
    JOB_MACHINE,
    JOBS_IN_FLIGHT,
    PILOT_MACHINE,
    AttemptOutcome,
    FileRole,
    FileState,
    JobState,
    PilotState,
)
from services.job_executor.exchange_codec import Usage


@dataclasses.dataclass(frozen=True)
class Statement:
    """SQL text with its named parameters (``:name``) turned into asyncpg's positional ones, in order."""

    sql: str
    names: tuple[str, ...]

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]


def _sql(text: str) -> Statement:
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"
    return Statement(re.sub(r"(?<![:\w]):([a-z_]+)\b", number, text), tuple(names))


def _sql_list(values: Iterable[str]) -> str:
    """A literal list of state names for IN (...): constants of the state machines, never input. Literals, not
    parameters, so that generic plans can use the partial indexes whose predicates name these states."""
    names = sorted(str(v) for v in values)
    if not all(re.fullmatch(r"[a-z_]+", n) for n in names):
        raise ValueError(f"not a state name: {names}")
    return ", ".join(f"'{n}'" for n in names)


IN_FLIGHT = _sql_list(JOBS_IN_FLIGHT)
LIVE = may_move_sql(PILOT_MACHINE, PilotState.IDLE, or_to=[PilotState.BUSY])  # idle <-> busy
READY, DISPATCHED, RUNNING, FINISHED = (_sql_list([s]) for s in (JobState.READY, JobState.DISPATCHED,
                                                                   JobState.RUNNING, JobState.FINISHED))
INPUT = _sql_list([FileRole.INPUT])


def _sources(target: JobState) -> str:
    return may_move_sql(JOB_MACHINE, target)


_PILOT = _sql("""
    SELECT id, session_hash, status, resource_type, slots, cores, memory_mb, gpus FROM pilot_dat WHERE id = :pilot""")

_HELD = _sql(f"""
    SELECT count(*) AS jobs, coalesce(sum(t.cores), 0) AS cores, coalesce(sum(t.memory_mb), 0) AS memory_mb,
           count(*) FILTER (WHERE j.resource_type = 'gpu') AS gpu_jobs,
           count(*) FILTER (WHERE j.claim_request_id = :request_id) AS by_request
      FROM job_dat j JOIN task_dat t ON t.id = j.task_id
     WHERE j.pilot_id = :pilot AND j.status IN ({IN_FLIGHT})""")

# Rows a statement has just chosen (claimed, done) are looked up by index through = ANY(ARRAY(...)), and a claim's
# inputs per job (LATERAL, OFFSET 0 keeps it from being flattened): a join with a CTE whose size the generic plan
# cannot know became a hash join over all of JOB_DAT, FILE_DAT or JOB_ATTEMPT (measured: a finish read ~1,100
# buffers for 8 jobs and took 10 ms; now ~0.4 ms). Files are found by job only: a condition on role = 'input' let
# the planner prefer the partial unique index of a task's inputs (all of them) over the job's index (measured: a claim
# of 8 jobs read 12,000 index entries per job). An input file is pending until its job ends: the finish moves
# pending -> done, which names exactly the inputs.
_CLAIM = _sql(f"""
    WITH candidate AS (
        SELECT j.id, j.dispatch_key, t.cores, t.memory_mb
          FROM job_dat j JOIN task_dat t ON t.id = j.task_id
         WHERE j.status = {READY} AND j.resource_type = :resource_type
           AND (j.not_before IS NULL OR j.not_before <= now())
           AND t.status IN ({_sql_list(TASK_STATES_WHOSE_JOBS_PROCEED)})
           AND t.cores <= least(CAST(:free_cores AS integer), CAST(:job_cores AS integer))
           AND t.memory_mb <= least(CAST(:free_memory AS integer), CAST(:job_memory AS integer))
         ORDER BY j.dispatch_key, j.id
         LIMIT :limit
         FOR UPDATE OF j SKIP LOCKED),
    fitting AS (
        SELECT id FROM (SELECT id, sum(cores) OVER w AS cores, sum(memory_mb) OVER w AS memory_mb
                          FROM candidate WINDOW w AS (ORDER BY dispatch_key, id)) AS running_total
         WHERE cores <= :free_cores AND memory_mb <= :free_memory),
    claimed AS (
        UPDATE job_dat j
           SET status = {DISPATCHED}, pilot_id = :pilot, attempt = j.attempt + 1, started_at = now(),
               heartbeat_at = now(), finished_at = NULL, not_before = NULL, claim_request_id = :request_id
         WHERE j.id = ANY(ARRAY(SELECT id FROM fitting)) AND j.status IN ({_sources(JobState.DISPATCHED)})
        RETURNING j.id, j.attempt, j.task_id, j.dispatch_key, j.error_category AS last_error, j.resource_type),
    opened AS (
        INSERT INTO job_attempt (job_id, attempt, pilot_id) SELECT id, attempt, :pilot FROM claimed)
    SELECT c.id, c.attempt, c.task_id, c.last_error, c.resource_type, f.lfn, f.url, f.size, f.adler32
      FROM claimed c LEFT JOIN LATERAL (
           SELECT id, role, lfn, url, size, adler32 FROM file_dat WHERE job_id = c.id OFFSET 0) AS f
           ON f.role = {INPUT}
     ORDER BY c.dispatch_key, c.id, f.id""")

# A retried exchange delivers the jobs its first attempt claimed: their heartbeat says so (and fences give_back).
_REDELIVERED = _sql(f"""
    UPDATE job_dat SET heartbeat_at = clock_timestamp()
     WHERE id = ANY(CAST(:job_ids AS bigint[])) AND pilot_id = :pilot AND status IN ({IN_FLIGHT})""")

_INPUTS = _sql(f"""
    SELECT job_id, lfn, url, size, adler32
      FROM (SELECT * FROM file_dat WHERE job_id = ANY(CAST(:job_ids AS bigint[])) OFFSET 0) AS f
     WHERE role = {INPUT} ORDER BY id""")

# A job's wall time counts from its start: started_at, the dispatch time until then, becomes the running start (a
# prefetched job waits on its pilot's node, dispatched, for a slot).
_START_RUNNING = _sql(f"""
    UPDATE job_dat j SET status = {RUNNING}, heartbeat_at = now(), started_at = now()
      FROM unnest(CAST(:job_ids AS bigint[]), CAST(:attempts AS integer[])) AS r(job_id, attempt)
     WHERE j.id = r.job_id AND j.attempt = r.attempt AND j.pilot_id = :pilot
       AND j.status IN ({_sources(JobState.RUNNING)})
    RETURNING j.id""")

_FINISH = _sql(f"""
    WITH done AS (
        UPDATE job_dat j
           SET status = {FINISHED}, finished_at = now(), exit_code = 0, error_category = NULL, error_message = NULL
          FROM unnest(CAST(:job_ids AS bigint[]), CAST(:attempts AS integer[])) AS r(job_id, attempt)
         WHERE j.id = r.job_id AND j.attempt = r.attempt AND j.pilot_id = :pilot
           AND j.status IN ({_sources(JobState.FINISHED)})
        RETURNING j.id, j.attempt, j.task_id),
    closed AS (
        UPDATE job_attempt a
           SET outcome = {_sql_list([AttemptOutcome.FINISHED])}, finished_at = now(), exit_code = 0,
               error_category = NULL, error_message = NULL
         WHERE a.job_id = ANY(ARRAY(SELECT id FROM done)) AND (a.job_id, a.attempt) IN (SELECT id, attempt FROM done)
           AND a.outcome = {_sql_list([AttemptOutcome.RUNNING])}),
    consumed AS (
        UPDATE file_dat f SET status = {_sql_list([FileState.DONE])}, updated_at = now()
         WHERE f.job_id = ANY(ARRAY(SELECT id FROM done)) AND f.status = {_sql_list([FileState.PENDING])})
    SELECT id, attempt, task_id FROM done""")

# The jobs the pilot still holds, and the heartbeat of those whose last one is older than :fresh_s: a beat is
# written only when it matters (the lost-job sweep looks for heartbeats older than the pilot timeout), so an
# exchange rewrites at most a few of its jobs' rows instead of every one every cycle.
_BEAT = _sql(f"""
    WITH held AS (
        SELECT j.id, j.heartbeat_at
          FROM unnest(CAST(:job_ids AS bigint[]), CAST(:attempts AS integer[])) AS r(job_id, attempt)
          JOIN job_dat j ON j.id = r.job_id
         WHERE j.attempt = r.attempt AND j.pilot_id = :pilot AND j.status IN ({IN_FLIGHT})
    ), beaten AS (
        UPDATE job_dat j SET heartbeat_at = now()
          FROM held
         WHERE j.id = held.id
           AND (held.heartbeat_at IS NULL OR held.heartbeat_at < now() - make_interval(secs => :fresh_s))
    )
    SELECT id FROM held""")

_PILOT_LOAD = _sql(f"""
    UPDATE pilot_dat p
       SET current_job_id = newest.id, heartbeat_at = now(),
           status = CASE WHEN newest.id IS NULL THEN {_sql_list([PilotState.IDLE])}
                         ELSE {_sql_list([PilotState.BUSY])} END
      FROM (SELECT max(id) AS id FROM job_dat WHERE pilot_id = :pilot AND status IN ({IN_FLIGHT})) AS newest
     WHERE p.id = :pilot AND p.status IN ({LIVE})""")


# Jobs an exchange claimed whose answer could not be delivered (the pilot had gone): back to ready at once, their
# attempts ended as lost without counting against the job's budgets (they never reached a pilot). Only jobs never
# beaten nor delivered again since their claim (heartbeat_at is still the claim's time, started_at): a retry of
# the exchange that got them meanwhile (_REDELIVERED) made them its pilot's.
_GIVE_BACK = _sql(f"""
    WITH back AS (
        UPDATE job_dat j SET status = {READY}, pilot_id = NULL, claim_request_id = NULL, not_before = NULL
          FROM unnest(CAST(:job_ids AS bigint[]), CAST(:attempts AS integer[])) AS r(job_id, attempt)
         WHERE j.id = r.job_id AND j.attempt = r.attempt AND j.pilot_id = :pilot AND j.heartbeat_at = j.started_at
           AND j.status IN ({may_move_sql(JOB_MACHINE, JobState.READY, only_from=[JobState.DISPATCHED])})
        RETURNING j.id, j.attempt, j.resource_type),
    closed AS (
        UPDATE job_attempt a
           SET outcome = {_sql_list([AttemptOutcome.LOST])}, finished_at = now(), error_category = 'lost',
               error_message = :reason
         WHERE a.job_id = ANY(ARRAY(SELECT id FROM back)) AND (a.job_id, a.attempt) IN (SELECT id, attempt FROM back)
           AND a.outcome = {_sql_list([AttemptOutcome.RUNNING])})
    SELECT resource_type, count(*) AS jobs FROM back GROUP BY resource_type""")

# What payloads used, as their pilots measured it (final figures with a report, the latest with a beat now and
# then): one statement for all of an exchange's figures, only for attempts of this pilot.
_USAGE = _sql("""
    UPDATE job_attempt a
       SET wall_s = u.wall_s, cpu_s = u.cpu_s, max_rss_mb = u.max_rss_mb, max_pss_mb = u.max_pss_mb,
           read_mb = u.read_mb, written_mb = u.written_mb, max_processes = u.max_processes
      FROM unnest(CAST(:job_ids AS bigint[]), CAST(:attempts AS integer[]), CAST(:wall_s AS float8[]),
                  CAST(:cpu_s AS float8[]), CAST(:max_rss_mb AS float8[]), CAST(:max_pss_mb AS float8[]),
                  CAST(:read_mb AS float8[]), CAST(:written_mb AS float8[]), CAST(:max_processes AS integer[]))
           AS u(job_id, attempt, wall_s, cpu_s, max_rss_mb, max_pss_mb, read_mb, written_mb, max_processes),
           job_dat j, task_dat t
     WHERE a.job_id = u.job_id AND a.attempt = u.attempt AND a.pilot_id = :pilot
       AND j.id = u.job_id AND t.id = j.task_id
    RETURNING a.job_id, a.attempt, t.task_type, t.cores""")

USAGE_FIELDS = ("wall_s", "cpu_s", "max_rss_mb", "max_pss_mb", "read_mb", "written_mb", "max_processes")


class Row(asyncpg.Record):  # type: ignore[misc]  # asyncpg has no type hints
    """A row of these statements, its columns also as attributes (like SQLAlchemy's rows)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


async def _fetch(db: asyncpg.Connection, statement: Statement, **values: Any) -> list[Row]:
    return await db.fetch(statement.sql, *statement.args(values), record_class=Row)  # type: ignore[no-any-return]


class Claimed(NamedTuple):
    id: int
    attempt: int
    task_id: int
    last_error: str | None = None  # how the job's previous attempt failed (a memory failure gets more memory)
    resource_type: str = "cpu"


async def hot_transaction(conn: AsyncConnection) -> asyncpg.Connection:
    """The transaction's asyncpg connection, set for these statements: sequential scans off for the rest of the
    transaction. Their plans are generic (prepared once per connection) and a generic plan made while the tables
    were small (a fresh deployment) chose sequential scans of JOB_ATTEMPT and FILE_DAT and kept them as the tables
    grew, until an ANALYZE: measured, a finish of 8 jobs went from 0.7 ms to 6.6 ms over 20,000 jobs. Every one of
    these statements has an index to use; off, the planner takes it whatever the tables' size then."""
    return await driver_connection(conn, "SET LOCAL enable_seqscan = off")


async def pilot(db: asyncpg.Connection, pilot_id: int) -> Row | None:
    """The pilot's row (what authentication and the claim need)."""
    rows = await _fetch(db, _PILOT, pilot=pilot_id)
    return rows[0] if rows else None


async def held_capacity(db: asyncpg.Connection, pilot_id: int, request_id: uuid.UUID | None) -> Row:
    """What the pilot's jobs in flight take: (jobs, cores, memory_mb, gpu_jobs), and how many of them the
    exchange ``request_id`` claimed already (a retried exchange)."""
    return (await _fetch(db, _HELD, pilot=pilot_id, request_id=request_id))[0]


async def claim_jobs(db: asyncpg.Connection, pilot_id: int, resource_type: str, free_cores: int, free_memory_mb: int,
                     limit: int, request_id: uuid.UUID | None, job_cores: int, job_memory_mb: int
                     ) -> tuple[list[Claimed], dict[int, list[Row]]]:
    """Up to ``limit`` of the highest-priority ready jobs of ``resource_type`` that together fit the free cores and
    memory, each within ``job_cores`` and ``job_memory_mb`` (the pilot's: what one job may take), dispatched to the
    pilot with their attempts opened, and their input files. The candidates are locked with SKIP LOCKED
    (concurrent claims never wait for each other nor take the same job); of them, the longest run in priority
    order that fits is taken."""
    if limit <= 0 or free_cores <= 0 or free_memory_mb <= 0:
        return [], {}
    rows = await _fetch(db, _CLAIM, pilot=pilot_id, resource_type=resource_type, free_cores=free_cores,
                        free_memory=free_memory_mb, limit=limit, request_id=request_id, job_cores=job_cores,
                        job_memory=job_memory_mb)
    claimed: dict[int, Claimed] = {}
    inputs: dict[int, list[Row]] = {}
    for row in rows:
        if row.id not in claimed:
            claimed[row.id] = Claimed(row.id, row.attempt, row.task_id, row.last_error, row.resource_type)
            inputs[row.id] = []
        if row.lfn is not None:
            inputs[row.id].append(row)
    return list(claimed.values()), inputs


async def redelivered(db: asyncpg.Connection, pilot_id: int, job_ids: list[int]) -> None:
    """The pilot's retried exchange gets these jobs again: they are its (no give-back may take them now)."""
    await _fetch(db, _REDELIVERED, job_ids=job_ids, pilot=pilot_id)


async def inputs_of(db: asyncpg.Connection, job_ids: list[int]) -> dict[int, list[Row]]:
    found: dict[int, list[Row]] = {job_id: [] for job_id in job_ids}
    for r in await _fetch(db, _INPUTS, job_ids=job_ids):
        found[r.job_id].append(r)
    return found


def _keys(keys: list[tuple[int, int]]) -> dict[str, Any]:
    return {"job_ids": [k[0] for k in keys], "attempts": [k[1] for k in keys]}


async def start_running_many(db: asyncpg.Connection, pilot_id: int, keys: list[tuple[int, int]]) -> set[int]:
    """dispatched -> running for the pilot's current attempts among ``keys``; the ids moved."""
    if not keys:
        return set()
    return {r.id for r in await _fetch(db, _START_RUNNING, **_keys(keys), pilot=pilot_id)}


async def finish_jobs_many(db: asyncpg.Connection, pilot_id: int, keys: list[tuple[int, int]]) -> list[Claimed]:
    """The pilot's current attempts among ``keys`` finished (exit 0): the jobs, their attempts and their input
    files end together; the jobs moved."""
    if not keys:
        return []
    return [Claimed(r.id, r.attempt, r.task_id) for r in await _fetch(db, _FINISH, **_keys(keys), pilot=pilot_id)]


async def record_usage(db: asyncpg.Connection, pilot_id: int, figures: list[tuple[int, int, Usage]]) -> list[Row]:
    """Store what the payloads of this pilot's attempts used; the rows written (job, attempt, task type, cores)."""
    if not figures:
        return []
    values: dict[str, Any] = {"pilot": pilot_id, "job_ids": [f[0] for f in figures],
                              "attempts": [f[1] for f in figures]}
    for name in USAGE_FIELDS:
        values[name] = [getattr(f[2], name) for f in figures]
    return await _fetch(db, _USAGE, **values)


async def give_back(db: asyncpg.Connection, pilot_id: int, keys: list[tuple[int, int]], reason: str) -> list[Row]:
    """The pilot's dispatched attempts among ``keys`` back to ready (never delivered); (resource_type, jobs)."""
    if not keys:
        return []
    return await _fetch(db, _GIVE_BACK, **_keys(keys), pilot=pilot_id, reason=reason)


async def beat_jobs(db: asyncpg.Connection, pilot_id: int, keys: list[tuple[int, int]], fresh_s: float) -> set[int]:
    """The heartbeat of the pilot's jobs in flight (written only where the last one is older than ``fresh_s``);
    the ids it still holds (the others must stop)."""
    if not keys:
        return set()
    return {r.id for r in await _fetch(db, _BEAT, **_keys(keys), pilot=pilot_id, fresh_s=fresh_s)}


async def set_pilot_load(db: asyncpg.Connection, pilot_id: int) -> None:
    """busy while it holds a job (current_job_id: the newest), idle otherwise, and its heartbeat: one statement."""
    await _fetch(db, _PILOT_LOAD, pilot=pilot_id)
