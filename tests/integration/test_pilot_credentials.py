"""Per-pilot credentials: issued and revoked by operators, each bound to what its pilots may register as."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from common.db.models import pilot_credentials, pilots
from tests.conftest import OPERATOR_TOKEN, PILOT_TOKEN, WFMS_TOKEN, running_app

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
CPU_NODE = {"name": "wn-cpu-rack1", "resource_type": "cpu", "max_cores": 8, "host_pattern": "wn-cpu-*"}
REGISTRATION = {"host": "wn-cpu-07", "resource_type": "cpu", "cores": 8, "memory_mb": 16000, "gpus": 0,
                "version": "t"}


@pytest.fixture
async def site(settings, tmp_path):
    """The task-manager (operators issue credentials there) and the job-executor (pilots present them)."""
    from services.job_executor.app import create_app as job_executor_app
    from services.task_manager.app import create_app as task_manager_app

    tuned = settings.model_copy(update={"storage_root": str(tmp_path), "oversight_interval_s": 60,
                                        "credential_cache_s": 0})
    async with running_app(task_manager_app(tuned)) as tm, running_app(job_executor_app(tuned)) as je:
        yield tm, je


async def issue(tm, **overrides) -> dict:
    response = await tm.post("/api/v1/pilot-credentials", json={**CPU_NODE, **overrides}, headers=OPERATOR)
    assert response.status_code == 201, response.text
    return response.json()


async def test_only_operators_issue_list_and_revoke_credentials(site) -> None:
    tm, _ = site
    for token in (WFMS_TOKEN, PILOT_TOKEN):
        headers = {"Authorization": f"Bearer {token}"}
        assert (await tm.post("/api/v1/pilot-credentials", json=CPU_NODE, headers=headers)).status_code == 403
        assert (await tm.get("/api/v1/pilot-credentials", headers=headers)).status_code == 403
    assert (await tm.get("/api/v1/pilot-credentials")).status_code == 401


async def test_the_token_is_shown_once_and_only_its_digest_is_kept(site, db) -> None:
    tm, _ = site
    issued = await issue(tm)
    assert issued["token"].startswith("wmsp_") and len(issued["token"]) > 40
    listed = (await tm.get("/api/v1/pilot-credentials", headers=OPERATOR)).json()
    assert [c["id"] for c in listed] == [issued["id"]] and "token" not in listed[0]
    async with db.connect() as conn:
        stored = (await conn.execute(sa.select(pilot_credentials))).one()
    assert issued["token"] not in {str(v) for v in stored}


@pytest.mark.parametrize(("change", "reason"), [
    ({"resource_type": "gpu", "gpus": 1}, "registers cpu pilots only, not gpu"),
    ({"cores": 16}, "at most 8 cores"),
    ({"host": "laptop-of-mallory"}, "hosts matching 'wn-cpu-*'"),
])
async def test_a_credential_registers_only_what_it_is_bound_to(site, db, change, reason) -> None:
    tm, je = site
    token = (await issue(tm))["token"]
    response = await je.post("/pilot/v1/pilots", json={**REGISTRATION, **change},
                             headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403, response.text
    assert reason in response.json()["detail"]
    async with db.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(pilots))).scalar_one() == 0


async def test_a_credential_bound_to_a_network_registers_only_from_it(site, db) -> None:
    """Issue 21 finding 9: the host glob is a label the pilot reports itself; a network is what the server sees."""
    tm, je = site
    assert (await tm.post("/api/v1/pilot-credentials", json={**CPU_NODE, "network": "not/a/net"},
                          headers=OPERATOR)).status_code == 422
    far = (await issue(tm, name="far-rack", network="10.99.0.0/16"))["token"]
    refused = await je.post("/pilot/v1/pilots", json=REGISTRATION, headers={"Authorization": f"Bearer {far}"})
    assert refused.status_code == 403 and "connections from 10.99.0.0/16" in refused.json()["detail"]
    near = await issue(tm, name="this-rack", network="127.0.0.0/8")
    assert near["network"] == "127.0.0.0/8"
    accepted = await je.post("/pilot/v1/pilots", json=REGISTRATION,
                             headers={"Authorization": f"Bearer {near['token']}"})
    assert accepted.status_code == 201, accepted.text


def test_a_network_bound_credential_is_refused_over_the_broker() -> None:
    from common.pilot_protocol import PilotRegistration
    from services.job_executor.credentials import PilotGrant, registration_refusal

    grant = PilotGrant(key="k", credential_id=1, name="rack", network="10.0.0.0/8")
    registration = PilotRegistration.model_validate({**REGISTRATION})
    assert "register over REST" in registration_refusal(grant, registration, None)
    assert registration_refusal(grant, registration, "10.1.2.3") is None
    assert "not 192.168.1.1" in registration_refusal(grant, registration, "192.168.1.1")


async def test_a_gpu_credential_bounds_gpus_and_a_cpu_credential_allows_none(site) -> None:
    tm, je = site
    bad = await tm.post("/api/v1/pilot-credentials", json={**CPU_NODE, "max_gpus": 2}, headers=OPERATOR)
    assert bad.status_code == 422 and "cannot allow GPUs" in bad.text
    token = (await issue(tm, name="wn-gpu", resource_type="gpu", max_gpus=2, host_pattern="wn-gpu-??"))["token"]
    auth = {"Authorization": f"Bearer {token}"}
    gpu = {**REGISTRATION, "host": "wn-gpu-01", "resource_type": "gpu"}
    assert (await je.post("/pilot/v1/pilots", json={**gpu, "gpus": 4}, headers=auth)).status_code == 403
    assert (await je.post("/pilot/v1/pilots", json={**gpu, "gpus": 2}, headers=auth)).status_code == 201


async def test_a_revoked_credential_is_refused_at_once_for_every_call(site, db) -> None:
    tm, je = site
    issued = await issue(tm)
    auth = {"Authorization": f"Bearer {issued['token']}"}
    registered = await je.post("/pilot/v1/pilots", json=REGISTRATION, headers=auth)
    assert registered.status_code == 201, registered.text
    pilot_id, session = registered.json()["pilot_id"], registered.json()["session"]
    async with db.connect() as conn:
        row = (await conn.execute(sa.select(pilots.c.credential_id).where(pilots.c.id == pilot_id))).one()
    assert row.credential_id == issued["id"]
    beat = await je.post(f"/pilot/v1/pilots/{pilot_id}/heartbeat", json={},
                         headers={**auth, "X-Pilot-Session": session})
    assert beat.status_code == 200

    revoked = await tm.post(f"/api/v1/pilot-credentials/{issued['id']}/revoke", headers=OPERATOR)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = await tm.post(f"/api/v1/pilot-credentials/{issued['id']}/revoke", headers=OPERATOR)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]  # revoking twice changes nothing
    beat = await je.post(f"/pilot/v1/pilots/{pilot_id}/heartbeat", json={},
                         headers={**auth, "X-Pilot-Session": session})
    assert beat.status_code == 401
    assert (await je.post("/pilot/v1/pilots", json=REGISTRATION, headers=auth)).status_code == 401
    assert (await tm.post("/api/v1/pilot-credentials/999999/revoke", headers=OPERATOR)).status_code == 404
    listed = (await tm.get("/api/v1/pilot-credentials", headers=OPERATOR)).json()
    assert listed == []  # revoked ones only with ?all=true
    assert len((await tm.get("/api/v1/pilot-credentials?all=true", headers=OPERATOR)).json()) == 1


async def test_other_roles_cannot_act_as_pilots(site) -> None:
    _, je = site
    for token, status in ((WFMS_TOKEN, 403), (OPERATOR_TOKEN, 403), ("wmsp_not-issued", 401)):
        response = await je.post("/pilot/v1/pilots", json=REGISTRATION, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status, (token, response.text)
