"""The job-executor's error counters (the E of USE), counted where the errors happen, per replica (sum them), and
the distributions of what payloads use (from the pilots' job monitoring data)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPT_FAILURES = Counter("wms_attempt_failures_total", "Job attempts that ended failed or lost, by error category",
                           ["category"])
REPORTS_REFUSED = Counter("wms_pilot_reports_refused_total",
                          "Pilot reports refused: 409 (not the current attempt: stale, fenced) or 422 (invalid)",
                          ["status"])
for _status in ("409", "422"):  # exposed at 0 from the start: a dashboard's rate() needs the series to exist
    REPORTS_REFUSED.labels(_status)


def attempts_failed(category: str, n: int = 1) -> None:
    ATTEMPT_FAILURES.labels(category).inc(n)


def report_refused(status: int) -> None:
    REPORTS_REFUSED.labels(str(status)).inc()


JOB_CPU_EFFICIENCY = Histogram("wms_job_cpu_efficiency", "Ended attempts' CPU efficiency: cpu_s / (wall_s x cores)",
                               ["task_type"], buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.5))
JOB_MAX_RSS = Histogram("wms_job_max_rss_megabytes", "Ended attempts' largest resident memory (MB)", ["task_type"],
                        buckets=(16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384))


def attempt_used(task_type: str, cores: int, wall_s: float, cpu_s: float, max_rss_mb: float) -> None:
    if wall_s > 0:
        JOB_CPU_EFFICIENCY.labels(task_type).observe(cpu_s / (wall_s * max(cores, 1)))
    JOB_MAX_RSS.labels(task_type).observe(max_rss_mb)
