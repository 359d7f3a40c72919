"""job-executor application: pilot REST API and RabbitMQ channel, oversight loop, task commands, health."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI

from common.api_docs import document_errors, operation_name
from common.background import Loop
from common.dsm import DsmClient
from common.messages import Envelope, TaskEvent
from common.observability import add_health_routes, instrument, map_error, observe_message, run_service
from common.runtime import ServiceRuntime
from common.settings import Settings
from services.job_executor.api import router
from services.job_executor.attempts import ReportInvalid, ReportRefused
from services.job_executor.credentials import PilotCredentials
from services.job_executor.exchange import Exchanges, ReadyWatcher
from services.job_executor.mq_channel import PilotMqChannel
from services.job_executor.oversight import Oversight
from services.job_executor.pilot_sessions import PilotRefused, PilotSessions, TooManyRegistrations
from services.job_executor.refusals import (
    REPORT_INVALID_STATUS,
    REPORT_REFUSED_STATUS,
    TOO_MANY_REGISTRATIONS_STATUS,
    refusal_status,
)
from services.job_executor.single_calls import SingleCalls
from services.job_executor.telemetry import Telemetry

SERVICE = "job-executor"
log = logging.getLogger("wms.job_executor")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ServiceRuntime(app, SERVICE) as runtime:
        settings, engine, broker = runtime.settings, runtime.engine, runtime.broker
        dsm = DsmClient(settings.dsm_url, settings.service_token, settings.dsm_timeout_s)
        runtime.close_later(dsm.close)
        oversight = Oversight(engine, settings, dsm, broker.topology, runtime.relay.wake,
                              broker_ready=lambda: broker.is_connected)
        sessions = PilotSessions(engine, settings)
        credentials = PilotCredentials(engine, settings)
        watcher = ReadyWatcher(engine)
        watcher.start()
        runtime.close_later(watcher.close)
        exchanges = Exchanges(sessions, watcher, on_job_ended=oversight.wake)
        single_calls = SingleCalls(exchanges)

        async def on_task_event(envelope: Envelope, event: object, _: AbstractIncomingMessage) -> None:
            assert isinstance(event, TaskEvent)
            with observe_message(SERVICE, "task-events"):
                await oversight.apply_task_event(envelope.type, event)

        await broker.consume(broker.topology.queue("job-executor.task-events"), on_task_event)
        await PilotMqChannel(broker, sessions, exchanges, single_calls, credentials).start()
        housekeeping = Loop("housekeeping", oversight.housekeep, settings.housekeeping_interval_s)
        telemetry = Telemetry(engine, broker, settings.metrics_interval_s)
        runtime.close_later(telemetry.leadership.release)
        runtime.run(oversight.loop, housekeeping, telemetry.loop)
        app.state.sessions, app.state.oversight, app.state.pilot_credentials = sessions, oversight, credentials
        app.state.exchanges, app.state.single_calls = exchanges, single_calls
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="SPD WMS job-executor (pilot API)", version="1", lifespan=lifespan,
                  generate_unique_id_function=operation_name)
    app.state.settings = settings or Settings()
    app.include_router(router)
    instrument(app, SERVICE)
    document_errors(app)
    add_health_routes(app, lambda: {"broker": app.state.broker.health()})
    map_error(app, PilotRefused, refusal_status)
    map_error(app, ReportRefused, REPORT_REFUSED_STATUS, lambda exc: {"current_state": exc.current_state})
    map_error(app, ReportInvalid, REPORT_INVALID_STATUS)
    map_error(app, TooManyRegistrations, TOO_MANY_REGISTRATIONS_STATUS)
    return app


def main() -> None:
    settings = Settings()
    run_service(create_app(settings), SERVICE, settings, settings.job_executor_port)
