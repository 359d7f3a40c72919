"""Failed and lost attempts: the retry policy (common.policies, pure) decides, job by job; the decisions are
applied in one statement per outcome (queries.requeue_jobs, queries.fail_jobs)."""
from __future__ import annotations

from collections.abc import Sequence

from common.db.models import Record
from common.db.session import Transaction
from common.policies import RetryPolicy
from common.settings import Settings
from services.job_executor import queries


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
