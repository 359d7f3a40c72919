"""The pilot factory's decisions (pure) and its queue configuration."""
from __future__ import annotations

import json

import pytest

from services.pilot_factory.policy import Decision, QueueState, decide
from services.pilot_factory.queues import SiteQueue, load_queues


def queue(**overrides) -> SiteQueue:
    return SiteQueue(**{"name": "cpu8", "batch_system": "slurm", "cores": 8, "memory_mb": 16000, "max_running": 10,
                        "max_queued": 3, "max_submit_per_cycle": 2, **overrides})


@pytest.mark.parametrize(("state", "expected"), [
    (QueueState(backlog=100, queued=0, running=0), Decision(submit=2, withdraw_queued=False)),  # the rate
    (QueueState(backlog=100, queued=2, running=0), Decision(submit=1, withdraw_queued=False)),  # max_queued
    (QueueState(backlog=100, queued=1, running=8), Decision(submit=1, withdraw_queued=False)),  # max_running
    (QueueState(backlog=100, queued=0, running=10), Decision(submit=0, withdraw_queued=False)),
    (QueueState(backlog=12, queued=1, running=4), Decision(submit=1, withdraw_queued=False)),  # 2 pilots of 8
    (QueueState(backlog=8, queued=1, running=4), Decision(submit=0, withdraw_queued=False)),  # the queued one will do
    (QueueState(backlog=0, queued=2, running=4), Decision(submit=0, withdraw_queued=True)),
    (QueueState(backlog=0, queued=0, running=4), Decision(submit=0, withdraw_queued=False)),  # running ones stay
])
def test_decisions(state: QueueState, expected: Decision) -> None:
    assert decide(queue(), state) == expected


def test_slots_default_to_cores_and_size_the_need() -> None:
    assert decide(queue(slots=2, max_submit_per_cycle=10, max_queued=10), QueueState(8, 0, 0)).submit == 4


def test_queue_files_are_validated(tmp_path) -> None:
    good = tmp_path / "queues.json"
    good.write_text(json.dumps([{"name": "gpu", "batch_system": "slurm", "resource_type": "gpu", "gpus": 1}]))
    assert [q.name for q in load_queues(str(good))] == ["gpu"]
    assert load_queues(None) == []
    for body, reason in [
        ([{"name": "gpu", "batch_system": "slurm", "resource_type": "gpu"}], "gpus >= 1"),
        ([{"name": "a", "batch_system": "slurm"}, {"name": "a", "batch_system": "local"}], "unique"),
        ([{"name": "a", "batch_system": "slurm", "pilot_env": {"PATH": "/evil"}}], "WMS_PILOT_"),
        ([{"name": "A b", "batch_system": "slurm"}], "name"),
        ([{"name": "a", "batch_system": "slurm", "max_runing": 3}], "max_runing"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(body))
        with pytest.raises(ValueError, match=reason):
            load_queues(str(bad))
    with pytest.raises(ValueError, match="nowhere"):
        load_queues(str(tmp_path / "nowhere.json"))


def test_only_mq_pilots_are_given_the_broker_login() -> None:
    """Issue 21, finding 7: every pilot the factory submitted carried a broker URL (by default guest's), whatever
    its channel. A REST pilot gets none; an MQ pilot gets the pilots' broker login."""
    from services.pilot_factory.factory import Factory
    from services.pilot_factory.queues import SiteQueue
    from services.pilot_factory.settings import FactorySettings

    settings = FactorySettings(factory_pilot_amqp_url="amqp://wms-pilot:p@broker:5672/")
    factory = Factory(None, settings, [], {})  # type: ignore[arg-type]  # pilot_job needs neither
    rest = factory.pilot_job(SiteQueue(name="rest", batch_system="local", channel="rest"), "p1").env
    mq = factory.pilot_job(SiteQueue(name="mq", batch_system="local", channel="mq"), "p2").env
    assert "WMS_PILOT_AMQP_URL" not in rest and rest["WMS_PILOT_CHANNEL"] == "rest"
    assert mq["WMS_PILOT_AMQP_URL"] == "amqp://wms-pilot:p@broker:5672/"
