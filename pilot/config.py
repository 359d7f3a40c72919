"""Pilot configuration: environment variables WMS_PILOT_* (the project's WMS_ prefix)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.policies import ResourceType

PAYLOAD_ENV_DEFAULT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")


class PilotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WMS_PILOT_", extra="ignore", env_ignore_empty=True)

    channel: Literal["rest", "mq"] = "rest"
    # job-executor (REST channel); replicas: several URLs separated by commas, the next tried when one fails
    server_url: str = "http://127.0.0.1:8085"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"  # RabbitMQ (mq channel)
    broker_namespace: str = "wms"
    token: str = "dev-pilot-token"
    # The token in a file of the pilot's own (mode 600) instead of the environment: payloads never see it.
    token_file: str | None = None
    # Set by the pilot daemon: where the application leaves its session (mode 600) while it is registered, so that
    # the daemon can say the application died (its jobs are then retried at once, not after the heartbeat timeout).
    session_file: str | None = None
    workdir: str = "/var/tmp/spd-wms/pilot"
    lifetime_s: float = Field(3600.0, gt=0)  # no new job is taken after this
    idle_limit_s: float = Field(120.0, gt=0)  # exit after this long without work
    idle_poll_s: float = Field(2.0, gt=0)
    # Jobs run at once (each within the node's cores, memory and GPUs; the job-executor sizes them by their
    # task's cores and memory). 1: one job after another.
    slots: int = Field(1, ge=1, le=1024)
    # With free slots, a cycle waits at the job-executor up to this long for work (long poll).
    long_poll_s: float = Field(10.0, ge=0, le=30)
    request_timeout_s: float = Field(30.0, gt=0)
    # An unavailable server (5xx, timeout, lost connection, broker down) is retried with backoff doubling up
    # to this; a finished job's report is retried until it is accepted or refused, for at most report_give_up_s.
    retry_max_s: float = Field(30.0, gt=0)
    report_give_up_s: float = Field(6 * 3600.0, gt=0)
    # Staging bandwidth limit in MB/s (0: unlimited), to spare shared storage when a farm stages at once.
    stage_bandwidth_mbps: float = Field(0.0, ge=0)
    # The only variables of the pilot's own environment a payload sees (never the pilot's token or broker URL):
    # WMS_PILOT_PAYLOAD_ENV='["PATH", "HOME"]'.
    payload_env: list[str] = Field(default_factory=lambda: list(PAYLOAD_ENV_DEFAULT))
    # Asked to stop (SIGTERM) while the server is unavailable: a pending report is retried this much longer.
    stop_grace_s: float = Field(30.0, ge=0)
    # Resources: detected, unless set (tests, or a site that wants to offer less than the node has).
    resource_type: ResourceType | None = None
    cores: int | None = Field(None, ge=1)
    memory_mb: int | None = Field(None, ge=1)
    gpus: int | None = Field(None, ge=0)
    host: str | None = None
    # The batch job this pilot runs in (set by the pilot factory's job script; reported at registration so the
    # factory can tell which pilot a batch job that ended was): e.g. slurm and $SLURM_JOB_ID.
    batch_system: str | None = None
    batch_job_id: str | None = None
    # How payloads run (pilot/runtimes): 'sandbox' (bubblewrap; the default) or 'plain' (a subprocess as the
    # pilot's user, containing nothing: for nodes without user namespaces, chosen explicitly).
    runtime: Literal["sandbox", "plain"] = "sandbox"
    # A pilot running as root runs sandboxed payloads as this user (a name or uid:gid); never root.
    payload_user: str = "nobody"
    # Read-only paths payloads need that lie in directories hidden or closed to the payload user (a software
    # area under /root or /tmp): WMS_PILOT_SANDBOX_PATHS='["/opt/spd"]'. The pilot's own Python is always bound.
    sandbox_paths: list[str] = Field(default_factory=list)
    bwrap: str = "bwrap"
    # Limits per attempt: memory is the job's memory_mb times this factor (the whole payload: anon + shmem of
    # its control group, or the PSS of its processes where the node has no cgroups); output volume (what it
    # writes into its directory) and its log (kept as head and tail).
    memory_factor: float = Field(2.0, ge=1.0, le=64.0)
    max_output_mb: int = Field(20_000, ge=1)
    max_log_mb: int = Field(50, ge=1)
    max_processes: int = Field(4096, ge=16)
    # A control group per payload where the node allows one (cgroup v2 delegated, or v1 writable as root).
    cgroups: bool = True
    # How often the payload is measured (CPU, memory, I/O, processes), and how often running jobs' latest
    # figures travel with a heartbeat.
    usage_interval_s: float = Field(5.0, gt=0)
    usage_report_s: float = Field(60.0, ge=0)  # 0: with every heartbeat
