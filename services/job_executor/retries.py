"""Failed and lost attempts: the retry policy (common.policies, pure) decides, job by job; the decisions are
applied in one statement per outcome (queries.requeue_jobs, queries.fail_jobs)."""
from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from common.db.models import Record
from common.db.session import Transaction
from common.policies import RetryPolicy
from common.settings import Settings
from common.states import AttemptOutcome
from services.job_executor import errors, queries
from services.job_executor.attempts import remove_attempts, storage_prefix


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(settings.retry_backoff_s, settings.retry_backoff_max_s, settings.max_lost_attempts)


async def retry_or_fail(conn: Transaction, in_flight: Sequence[Record], policy: RetryPolicy, category: str,
                        message: str | None, exit_code: int | None) -> tuple[list[Record], list[Record]]:
    """``in_flight``: rows of queries.attempt_in_flight / lost_in_flight. Returns the (retried, failed) rows
    (id, attempt, task_id) that really moved."""
    requeued: list[tuple[int, int, int, float]] = []
    failing: list[tuple[int, int, int]] = []
    for job in in_flight:
        decision = policy.decide(job.attempt, job.lost_attempts, job.max_attempts, category, job.previous_category)
        if decision.retry:
            requeued.append((job.id, job.attempt, decision.lost_attempts, decision.backoff_s))
        else:
            failing.append((job.id, job.attempt, decision.lost_attempts))
    retried = await queries.requeue_jobs(conn, requeued, category, message, exit_code)
    failed = await queries.fail_jobs(conn, failing, category, message, exit_code)
    return retried, failed


@dataclasses.dataclass
class LostJobs:
    retried: list[Record]
    failed: list[Record]
    staged_prefixes: list[str]  # where their attempts staged: never registered, so removed

    async def remove_staged(self, settings: Settings) -> None:
        """After the commit: nothing a lost attempt staged stays (a report would have ended it)."""
        if self.staged_prefixes:
            await asyncio.to_thread(remove_attempts, self.staged_prefixes, settings.storage_root)


async def lose_jobs(conn: Transaction, settings: Settings, in_flight: Sequence[Record], policy: RetryPolicy,
                    message: str) -> LostJobs:
    """Jobs whose pilot is gone (silent, its batch job ended, or said dead by its daemon): retried within the
    infrastructure-loss budget or failed, their attempts ended as lost. ``in_flight``: locked rows with the retry
    facts (queries.lost_in_flight, queries.in_flight_of_pilot)."""
    if not in_flight:
        return LostJobs([], [], [])
    retried, failed = await retry_or_fail(conn, in_flight, policy, "lost", message, None)
    keys = [(j.id, j.attempt) for j in in_flight]
    await queries.end_attempts(conn, keys, AttemptOutcome.LOST, None, "lost", message)
    errors.attempts_failed("lost", len(keys))
    datasets = await queries.output_datasets_of(conn, [j.id for j in in_flight])
    return LostJobs(retried, failed, [storage_prefix(settings, datasets[job_id][1], job_id, attempt)
                                      for job_id, attempt in keys if job_id in datasets])
