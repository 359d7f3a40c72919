"""The compose file and the monitoring configuration agree with each other (services, ports, mounted files)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WMS_PROGRAMS = {"dsm": "wms-dsm", "task-manager": "wms-task-manager", "job-manager": "wms-job-manager",
                "task-executor": "wms-task-executor", "job-executor": "wms-job-executor"}


def test_every_wms_service_waits_for_the_migration_and_has_a_healthcheck() -> None:
    for name, program in WMS_PROGRAMS.items():
        service = SERVICES[name]
        assert service["command"] == [program]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert "readyz" in " ".join(service["healthcheck"]["test"])
        assert service["environment"]["WMS_LISTEN_HOST"] == "0.0.0.0"
    assert SERVICES["migrate"]["command"] == ["wms-migrate"]
    assert SERVICES["pilot"]["depends_on"]["job-executor"] == {"condition": "service_healthy"}
    assert "container_name" not in SERVICES["pilot"] and "ports" not in SERVICES["pilot"]  # --scale pilot=N


def test_only_the_expected_ports_are_published() -> None:
    published = {name: s.get("ports", []) for name, s in SERVICES.items() if s.get("ports")}
    assert set(published) == {"rabbitmq", "task-manager", "job-executor", "prometheus", "grafana"}
    assert all(p.startswith(("127.0.0.1:", "${WMS_PUBLISH_ADDR:-127.0.0.1}:")) for ps in published.values() for p in ps)


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load((ROOT / "deploy/monitoring/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    expected = {f"{name}:{SERVICES[name]['environment']['WMS_HEALTH_PORT']}" for name in WMS_PROGRAMS}
    assert targets == expected


def test_monitoring_profile_mounts_files_that_exist() -> None:
    for name in ("prometheus", "grafana"):
        assert SERVICES[name]["profiles"] == ["monitoring"]
        for volume in SERVICES[name]["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume
    dashboard = json.loads((ROOT / "deploy/monitoring/grafana/dashboards/wms.json").read_text())
    assert dashboard["uid"] == "spd-wms" and all(p["targets"] for p in dashboard["panels"])


def test_the_broker_users_of_compose_match_the_setup_tool() -> None:
    from tools.broker_setup.setup import dead_letter_policy, pilot_permissions

    rabbitmq = SERVICES["rabbitmq"]
    assert "./deploy/rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/20-wms.conf:ro" in rabbitmq["volumes"]
    # the definitions of scripts/make-secrets, else the development ones
    assert ("${WMS_BROKER_DEFINITIONS:-./deploy/rabbitmq/definitions.dev.json}:/etc/rabbitmq/definitions.json:ro"
            in rabbitmq["volumes"])
    assert "load_definitions = /etc/rabbitmq/definitions.json" in (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text()
    dev = json.loads((ROOT / "deploy/rabbitmq/definitions.dev.json").read_text())
    permissions = {p["user"]: p for p in dev["permissions"]}
    assert {k: permissions["wms-pilot"][k] for k in ("configure", "write", "read")} == pilot_permissions("wms")
    assert dev["policies"] == [dead_letter_policy("wms")]  # the dead-letter queues' bound, as the services declare
    assert SERVICES["pilot"]["environment"]["WMS_PILOT_AMQP_URL"].startswith("amqp://wms-pilot:")
    assert "guest" not in json.dumps(COMPOSE)  # nobody uses the broker's default login


def test_make_secrets_writes_a_private_env_file_and_matching_broker_definitions(tmp_path) -> None:
    import base64
    import hashlib
    import os
    import stat
    import subprocess

    from common.settings import Settings

    done = subprocess.run([ROOT / "scripts" / "make-secrets"], env={**os.environ, "WMS_SECRETS_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    settings = Settings(_env_file=env_file)  # what the services read from it
    assert not settings.uses_dev_tokens and sorted(settings.api_tokens.values()) == ["operator", "pilot", "service",
                                                                                      "wfms"]
    definitions = json.loads((tmp_path / "deploy/rabbitmq/definitions.json").read_text())
    hashes = {u["name"]: base64.b64decode(u["password_hash"]) for u in definitions["users"]}
    for user, password in (("wms", values["WMS_BROKER_SERVICE_PASSWORD"]),
                           ("wms-pilot", values["WMS_PILOT_BROKER_PASSWORD"])):
        salt, digest = hashes[user][:4], hashes[user][4:]
        assert hashlib.sha256(salt + password.encode()).digest() == digest
    again = subprocess.run([ROOT / "scripts" / "make-secrets"], env={**os.environ, "WMS_SECRETS_DIR": str(tmp_path)},
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites secrets


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """compose's ${VAR:-default} (the only form the file uses), from ``variables`` (a shell, or .env)."""
    import re

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: variables.get(m[1]) or (m[2] or ""), value)


def _service_settings(variables: dict[str, str]):
    from common.settings import Settings

    environment = {k: _interpolate(str(v), variables) for k, v in SERVICES["task-manager"]["environment"].items()}
    return Settings(**{k.removeprefix("WMS_").lower(): v for k, v in environment.items()
                       if k.startswith("WMS_") and v and k != "WMS_API_TOKENS"},
                    **({"api_tokens": json.loads(variables["WMS_API_TOKENS"])} if "WMS_API_TOKENS" in variables
                       else {}))


def test_compose_without_secrets_holds_only_well_known_ones_which_the_services_refuse(tmp_path) -> None:
    """Issue 21, finding 7: PostgreSQL trusted every connection and the broker's password defaulted to a
    well-known one whatever WMS_DEV_MODE said. Now PostgreSQL asks for a password (scram) from .env, and without
    .env every secret compose hands the services is one they refuse outside development mode."""
    import os
    import subprocess

    postgres = SERVICES["postgres"]["environment"]
    assert "trust" not in json.dumps(SERVICES["postgres"]) and postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert postgres["POSTGRES_PASSWORD"] == "${WMS_DB_PASSWORD:-dev-db-password}"
    assert "${WMS_DB_PASSWORD:-dev-db-password}@postgres" in SERVICES["migrate"]["environment"]["WMS_DATABASE_URL"]

    well_known = _service_settings({}).well_known_secrets  # no .env, no shell variables
    assert [w.split(" (")[0] for w in well_known] == ["the development tokens", "a well-known database password",
                                                     "a well-known broker password"]
    done = subprocess.run([ROOT / "scripts" / "make-secrets"], env={**os.environ, "WMS_SECRETS_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    assert _service_settings(values).well_known_secrets == []


def test_pilots_have_a_network_of_their_own_with_the_job_executor_only() -> None:
    """The pilot containers run payloads: their network holds the job-executor and nothing else (PostgreSQL,
    RabbitMQ, the DSM and the other services are out of their reach: tests/containers/test_compose_networks.py
    proves it with connections); the MQ override adds RabbitMQ, never PostgreSQL or the DSM."""
    assert set(COMPOSE["networks"]) == {"services", "pilots"}
    on_pilots = {name for name, s in SERVICES.items() if "pilots" in s.get("networks", [])}
    assert on_pilots == {"pilot", "job-executor"}
    assert SERVICES["pilot"]["networks"] == ["pilots"]
    assert all(s.get("networks") for s in SERVICES.values())  # nobody falls back to the default network
    mq = yaml.safe_load((ROOT / "deploy/compose/mq-pilots.yml").read_text())["services"]
    assert set(mq) == {"rabbitmq", "pilot"} and mq["rabbitmq"]["networks"] == ["services", "pilots"]
    assert mq["pilot"]["environment"]["WMS_PILOT_CHANNEL"] == "mq"
