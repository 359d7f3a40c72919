"""The WMS on a three-node RabbitMQ cluster (its queues are quorum queues, replicated on the three nodes): the
services and the pilots are given all three nodes; the node they all connected to first is stopped mid-run. They
move to the other nodes, the queues keep their messages (a majority of their replicas is up), and the task
finishes with every file processed and registered exactly once."""
from __future__ import annotations

import subprocess

import pytest

from tests.faults.conftest import SCRIPTS
from tests.faults.harness import N_JOBS_DEFAULT, fault_run, now_utc, record

pytestmark = pytest.mark.e2e


async def test_a_broker_node_stopped_mid_run_loses_nothing(postgres_server_url, tmp_path, rabbitmq_cluster) -> None:
    urls, directory, port = rabbitmq_cluster
    assert len(urls.split(",")) == 3
    async with fault_run(postgres_server_url, urls, tmp_path) as run:
        task_id = await run.task_under_way("cluster", channels=("rest", "mq", "mq"))
        subprocess.run([SCRIPTS / "rabbitmq-cluster", "stop-node", directory, str(port), "0"], check=True,
                       capture_output=True, timeout=120)
        fault_end = now_utc()
        await run.wait_ended(task_id, timeout=240)
        await run.audit(task_id)
        await run.audit_system()  # no dead letter; every service ready (on the two nodes left)
        record("RabbitMQ cluster node stopped", f"3-node cluster, the first node stopped at {N_JOBS_DEFAULT // 4} "
               "finished jobs", "services and MQ pilots moved to the other nodes; task done, every file once",
               await run.recovery_s(fault_end))
