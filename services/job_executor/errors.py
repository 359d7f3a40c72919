"""The job-executor's error counters (the E of USE), counted where the errors happen, per replica (sum them)."""
from __future__ import annotations

from prometheus_client import Counter

ATTEMPT_FAILURES = Counter("wms_attempt_failures_total", "Job attempts that ended failed or lost, by error category",
                           ["category"])
REPORTS_REFUSED = Counter("wms_pilot_reports_refused_total",
                          "Pilot reports refused: 409 (not the current attempt: stale, fenced) or 422 (invalid)",
                          ["status"])


def attempts_failed(category: str, n: int = 1) -> None:
    ATTEMPT_FAILURES.labels(category).inc(n)


def report_refused(status: int) -> None:
    REPORTS_REFUSED.labels(str(status)).inc()
