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
