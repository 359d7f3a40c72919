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
