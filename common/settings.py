"""Configuration of every WMS process: one pydantic-settings class, environment prefix ``WMS_``.

Defaults work on a single machine with PostgreSQL and RabbitMQ on 127.0.0.1.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from typing import Annotated, Literal, get_args
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["wfms", "operator", "pilot", "service"]
TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

# Well-known development tokens: fine on a laptop, never in production (a warning is logged when they are used).
DEV_TOKENS: dict[str, Role] = {
    "dev-wfms-token": "wfms",
    "dev-operator-token": "operator",
    "dev-service-token": "service",
    "dev-pilot-token": "pilot",
}
# Passwords anybody can read in this repository (compose's development defaults, RabbitMQ's guest): refused at
# start-up unless WMS_DEV_MODE=1, but guest at a loopback address (a single machine's own broker, which RabbitMQ
# itself allows guest only from).
WELL_KNOWN_PASSWORDS = frozenset({"dev-db-password", "dev-broker-password", "dev-pilot-broker-password", "guest"})


class Settings(BaseSettings):
    # an empty variable counts as unset (compose passes `${VAR:-}` when the shell and .env do not set it)
    model_config = SettingsConfigDict(env_prefix="WMS_", extra="ignore", env_ignore_empty=True)

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/wms"
    db_pool_size: int = Field(10, ge=1, le=200)
    # Bounds on the database: a partition or a hung server fails a call instead of hanging a loop forever.
    db_connect_timeout_s: float = Field(5.0, gt=0)
    db_statement_timeout_s: float = Field(30.0, gt=0)

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Every exchange and queue name starts with this, so several deployments (or tests) can share one broker.
    broker_namespace: str = Field("wms", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    publish_timeout_s: float = Field(10.0, gt=0)
    # A message redelivered more often than this is poison and goes to its dead-letter queue.
    delivery_limit: int = Field(5, ge=1)
    # A dead-letter queue keeps at most this many messages and bytes: beyond, the oldest are dropped; the
    # WmsDeadLetterQueueFilling alert fires at 80 % of the count (WmsDeadLetters at the first one).
    dead_letter_max_messages: int = Field(100_000, ge=1, strict=True)
    dead_letter_max_bytes: int = Field(1 << 30, ge=1 << 20, strict=True)
    # The broker connection is re-established after a loss with this backoff (doubling up to the cap).
    broker_reconnect_max_s: float = Field(5.0, gt=0)
    # A handler that failed because the database, the DSM or the broker was unavailable is retried after this
    # delay (doubling per retry up to the cap) through the queue's retry queue: it never spends the delivery
    # limit, which is kept for poison messages.
    transient_retry_base_s: float = Field(0.5, gt=0)
    transient_retry_max_s: float = Field(30.0, gt=0)

    outbox_poll_interval_s: float = Field(1.0, gt=0)
    outbox_batch_size: int = Field(200, ge=1, le=10_000)
    # An outbox row whose publication failed is retried after 2^n seconds, capped; the rows behind it go on.
    outbox_retry_max_s: float = Field(60.0, gt=0)

    # Bearer token -> role. JSON in the environment: WMS_API_TOKENS='{"secret": "wfms:cms-wfms", "other": "operator"}'.
    # token -> "role" or "role:name" (the name is who the token speaks for: the owner of the tasks it submits and
    # the actor in the audit trail; without one, the role and the start of the token's sha256)
    api_tokens: dict[str, str] = Field(default_factory=lambda: {t: str(r) for t, r in DEV_TOKENS.items()})

    # The token WMS services present to each other and to the DSM (role 'service').
    service_token: str = "dev-service-token"
    # The development tokens above are refused at start-up unless this is set (the launcher sets it when no
    # tokens are given, and says so): a deployment never runs with tokens anybody can read in this file.
    dev_mode: bool = False

    # task-manager: the site's transformations registry (JSON; empty: the SPD demo's, examples/spd/), and the
    # development switch that lets tasks name raw commands instead (off: 422; logged loudly when on).
    transformations_file: str = ""
    allow_arbitrary_commands: bool = False

    # Data management system: the reference DSM of this project, or a site's own with the same API.
    dsm_url: str = "http://127.0.0.1:8084"
    dsm_timeout_s: float = Field(30.0, gt=0)

    # task-executor: how much of a dataset one chunk reads, and how far generation may run ahead of dispatch.
    chunk_files: int = Field(2000, ge=1, le=100_000)
    backlog_floor: int = Field(1000, ge=1)
    backlog_per_slot: int = Field(2, ge=1)
    dsm_poll_interval_s: float = Field(2.0, gt=0)
    # An input dataset that does not exist yet (DAQ not started, the producing task not started) is waited for
    # this long after the task's registration, then the task fails.
    dataset_wait_s: float = Field(300.0, ge=0)

    # Dispatch and oversight (job-executor, pilots). An online filter wants minutes, not hours: pilots beat
    # every heartbeat_interval_s and are declared dead (their jobs lost and retried) after pilot_timeout_s.
    heartbeat_interval_s: float = Field(15.0, gt=0)
    pilot_timeout_s: float = Field(60.0, gt=0)
    retry_backoff_s: float = Field(10.0, ge=0)
    retry_backoff_max_s: float = Field(300.0, ge=0)
    # Attempts lost to infrastructure (dead pilot, silent heartbeat) do not count against a task's max_attempts;
    # a job lost this many times fails (category 'lost').
    max_lost_attempts: int = Field(5, ge=1)
    # DSM registration of outputs after a transient DSM error: retried after 2^n seconds, capped.
    dsm_retry_max_s: float = Field(60.0, gt=0)
    oversight_interval_s: float = Field(2.0, gt=0)
    job_wall_time_s: int = Field(3600, ge=1)
    # The server enforces wall time too: a job running longer than its wall time plus this grace is failed
    # (category 'timeout', retried within max_attempts) and its pilot told to abort at its next heartbeat.
    wall_time_grace_s: float = Field(60.0, ge=0)
    # Prefetch per queue (resource type): a pilot may hold this many jobs beyond its slots, waiting on the node
    # (dispatched, not running) for a slot to free, so that single-slot pilots of short jobs pay one exchange for
    # several jobs. Each prefetched job fits the pilot on its own; all it holds fit (slots + prefetch) / slots
    # times its cores, memory and GPUs. Its wall time counts from its start; waiting, it is bounded by
    # (prefetch + 1) wall times. E.g. WMS_PILOT_PREFETCH='{"cpu": 3}'.
    pilot_prefetch: dict[str, Annotated[int, Field(ge=0, le=64)]] = Field(default_factory=lambda: {"cpu": 0, "gpu": 0})
    # A job that went over its memory is retried once with its memory times this factor (as PanDA does); a second
    # memory failure is final.
    memory_retry_factor: float = Field(2.0, ge=1.0, le=16.0)
    # Pilot registrations per credential: a steady rate with a burst (a farm starting at once); beyond: 429.
    pilot_registrations_per_s: float = Field(50.0, gt=0)
    pilot_registration_burst: int = Field(500, ge=1)
    # Operator-issued pilot credentials are looked up at most this often per token (a revocation takes effect
    # within this time).
    credential_cache_s: float = Field(5.0, ge=0)
    # Where pilots stage outputs (a shared filesystem in this version): file://<storage_root>/<dataset>/...
    storage_root: str = "/var/tmp/spd-wms/storage"

    # Larger request bodies are refused (413): the largest legitimate ones are 10,000-file registrations.
    max_request_bytes: int = Field(32 << 20, ge=1024)
    # A message on the pilots' broker channel larger than this is dead-lettered unread (and logged as a digest).
    pilot_max_message_bytes: int = Field(8 << 20, ge=1024)

    listen_host: str = "127.0.0.1"
    task_manager_port: int = Field(8081, ge=1, le=65535)
    job_manager_port: int = Field(8082, ge=1, le=65535)
    task_executor_port: int = Field(8083, ge=1, le=65535)
    dsm_port: int = Field(8084, ge=1, le=65535)
    job_executor_port: int = Field(8085, ge=1, le=65535)

    # How often the job-executor samples the system-wide gauges (jobs by state, queue depths, live pilots).
    metrics_interval_s: float = Field(10.0, gt=0)

    # Housekeeping (job-executor): consumed message ids and ended pilots (and pilot submissions) older than these
    # are purged; settled tasks (ended, outputs closed) with their jobs and file rows too when
    # task_retention_s > 0 (0: kept until an operator runs `wms purge`). The DSM is never touched.
    consumed_message_retention_s: float = Field(7 * 86400.0, gt=0)
    pilot_retention_s: float = Field(7 * 86400.0, gt=0)
    task_retention_s: float = Field(0.0, ge=0)
    # The telemetry's load samples (the monitor's backlog plot) are kept this long.
    load_sample_retention_s: float = Field(2 * 86400.0, gt=0)
    housekeeping_interval_s: float = Field(600.0, gt=0)

    log_level: str = "INFO"

    @field_validator("pilot_prefetch")
    @classmethod
    def _prefetch_per_queue(cls, prefetch: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(prefetch) - {"cpu", "gpu"})
        if unknown:
            raise ValueError(f"prefetch is set per queue (cpu, gpu), not for {', '.join(unknown)}")
        return prefetch

    @field_validator("api_tokens")
    @classmethod
    def _tokens_not_empty(cls, tokens: dict[str, str]) -> dict[str, str]:
        if any(not t.strip() for t in tokens):
            raise ValueError("empty bearer token")
        for grant in tokens.values():
            role, _, name = grant.partition(":")
            if role not in get_args(Role) or (":" in grant and not TOKEN_NAME.fullmatch(name)):
                raise ValueError(f"{grant!r} is not a role ({', '.join(get_args(Role))}) or role:name "
                                 "(a name of letters, digits, '.', '_', '@', '-')")
        return tokens

    @property
    def uses_dev_tokens(self) -> bool:
        return any(t in DEV_TOKENS for t in self.api_tokens) or self.service_token in DEV_TOKENS

    @property
    def well_known_secrets(self) -> list[str]:
        """What of this configuration anybody could know: development tokens, well-known passwords (named, never
        quoted)."""
        found = ["the development tokens (WMS_API_TOKENS, WMS_SERVICE_TOKEN)"] if self.uses_dev_tokens else []
        if _well_known_password(self.database_url):
            found.append("a well-known database password (WMS_DATABASE_URL)")
        if any(_well_known_password(url.strip()) for url in self.amqp_url.split(",") if url.strip()):
            found.append("a well-known broker password (WMS_AMQP_URL)")
        return found


def _well_known_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        password, host = unquote(parts.password or ""), parts.hostname or ""
    except ValueError:
        return False
    if password not in WELL_KNOWN_PASSWORDS:
        return False
    if password == "guest":
        try:
            return not (host == "localhost" or ipaddress.ip_address(host).is_loopback)
        except ValueError:
            return True
    return True


def refuse_well_known_secrets(settings: Settings) -> None:
    """At a process's start: exit 2 if it would run with secrets anybody knows, unless development mode says so
    (then a warning)."""
    found = settings.well_known_secrets
    if not found:
        return
    log = logging.getLogger("wms")
    if not settings.dev_mode:
        log.error("refusing to start with well-known secrets: %s. Set real ones (scripts/make-secrets for compose, "
                  "docs/security.md), or WMS_DEV_MODE=1 on a development machine", "; ".join(found))
        raise SystemExit(2)
    log.warning("development mode (WMS_DEV_MODE=1): well-known secrets are live: %s", "; ".join(found))

