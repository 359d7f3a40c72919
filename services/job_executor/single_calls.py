"""Protocol 1 (one call per claim, heartbeat and report) as thin adapters over the exchange, the pilots' one door.

No pilot of this repository speaks protocol 1 any more; its REST routes and MQ operations stay for single-job
clients (a site's own pilot, a script) and build an exchange request, so every rule of a claim and a report
(resources, GPUs, fencing, idempotent retries, exit codes and categories) lives on the one path pilots use
(docs/dispatch.md). What protocol 1 did on its own and no longer does: a claim by a pilot that holds as many jobs
as it has slots answers "no work" (204) instead of 409.
"""
from __future__ import annotations

import uuid

import msgspec

from common.pilot_protocol import Heartbeat, HeartbeatReply, JobReport, JobSpec
from services.job_executor.attempts import ReportInvalid, ReportRefused
from services.job_executor.exchange import Exchanges
from services.job_executor.exchange_codec import ExchangeReport, ExchangeRequest, JobBeat


class SingleCalls:
    def __init__(self, exchanges: Exchanges) -> None:
        self.exchanges = exchanges

    async def claim(self, pilot_id: int, session: str | None, request_id: uuid.UUID | None = None) -> JobSpec | None:
        """The pilot's next job (a GPU pilot takes GPU work first, then CPU work), or None. ``request_id`` makes
        the claim idempotent: a retried claim gets the job the first one produced."""
        reply = await self.exchanges.exchange(pilot_id, session, ExchangeRequest(want=1, request_id=request_id))
        return JobSpec.model_validate(msgspec.to_builtins(reply.jobs[0])) if reply.jobs else None

    async def heartbeat(self, pilot_id: int, session: str | None, beat: Heartbeat) -> HeartbeatReply:
        running = [JobBeat(job_id=beat.job_id, attempt=beat.attempt)] \
            if beat.job_id is not None and beat.attempt is not None else []
        reply = await self.exchanges.exchange(pilot_id, session, ExchangeRequest(running=running))
        if reply.abort:
            return HeartbeatReply(abort=True, reason=reply.abort[0].reason)
        return HeartbeatReply(abort=False)

    async def report(self, pilot_id: int, session: str | None, job_id: int, report: JobReport) -> None:
        """Raises ReportRefused (409: no longer this pilot's attempt) or ReportInvalid (422)."""
        report_of_job = msgspec.convert({"job_id": job_id, **report.model_dump(mode="json")}, ExchangeReport)
        request = ExchangeRequest(reports=[report_of_job])
        (outcome,) = (await self.exchanges.exchange(pilot_id, session, request)).reports
        if outcome.status == 409:
            raise ReportRefused(outcome.detail or "no longer this pilot's attempt", outcome.current_state)
        if outcome.status >= 400:
            raise ReportInvalid(outcome.detail or "invalid report")
