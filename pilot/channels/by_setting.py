"""The channel a pilot's settings name (WMS_PILOT_CHANNEL): REST or RabbitMQ."""
from __future__ import annotations

from pilot.channels.mq import MqChannel
from pilot.channels.rest import RestChannel
from pilot.config import PilotSettings


def channel_for(settings: PilotSettings) -> RestChannel | MqChannel:
    if settings.channel == "rest":
        return RestChannel(settings.server_url, settings.token, settings.request_timeout_s)
    return MqChannel(settings.amqp_url, settings.broker_namespace, settings.token, settings.request_timeout_s)
