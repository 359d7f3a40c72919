"""The clients honour 503 and Retry-After (issue 22, findings 1 and 10: `wms demo` and `wms watch` exited 1 on
the first 503 while the database restarted, though their tasks went on to `done`). Against a real HTTP server
that answers 503 a few times: the CLI's API client and the DSM client wait (saying what for) and get the answer;
past their budget they fail with the server's reason."""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Flaky(BaseHTTPRequestHandler):
    unavailable = 2  # how many requests get 503 before the answer
    seen = 0

    def do_GET(self) -> None:  # noqa: N802
        Flaky.seen += 1
        if Flaky.seen <= Flaky.unavailable:
            body, status, headers = b'{"detail": "database unavailable, retry later"}', 503, {"Retry-After": "1"}
        else:
            body, status, headers = json.dumps({"name": "raw.x", "status": "open", "n_files": 0}).encode(), 200, {}
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    Flaky.seen, Flaky.unavailable = 0, 2
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_cli_waits_out_503_and_says_so(flaky, capsys) -> None:
    from tools.cli.client import Api

    api = Api(flaky, "token", retry_s=30)
    assert api.get("/anything")["name"] == "raw.x"
    assert Flaky.seen == 3
    said = capsys.readouterr().err
    assert said.count("database unavailable, retry later") == 2 and "retrying in 1 s" in said


def test_the_cli_gives_up_after_its_budget_with_the_reason(flaky) -> None:
    from tools.cli.client import Api, CliError

    Flaky.unavailable = 1000
    with pytest.raises(CliError, match="HTTP 503: database unavailable, retry later"):
        Api(flaky, "token", retry_s=1.5).get("/anything")
    assert 2 <= Flaky.seen <= 3


def test_the_dsm_client_of_the_cli_waits_out_503(flaky) -> None:
    from common.dsm import DsmClient

    waits: list[str] = []

    async def go() -> str:
        client = DsmClient(flaky, "token", retry_s=30, on_wait=waits.append)
        try:
            dataset = await client.dataset("raw.x")
            assert dataset is not None
            return dataset.name
        finally:
            await client.close()

    assert asyncio.run(go()) == "raw.x"
    assert len(waits) == 2 and "503" in waits[0]


def test_a_pilot_waits_at_least_what_the_server_asks() -> None:
    """Pilots honour Retry-After too (their own backoff otherwise), within their cap."""
    from pilot.app import retry_pause_s

    assert retry_pause_s(0.5, None, 30, 1.0) == 0.5
    assert retry_pause_s(0.5, 2.0, 30, 1.1) == 2.0
    assert retry_pause_s(8.0, 2.0, 30, 1.0) == 8.0
    assert retry_pause_s(0.5, 3600.0, 30, 1.0) == 30


def test_the_pilots_rest_channel_reads_retry_after(flaky) -> None:
    from pilot.channels import ChannelUnavailable
    from pilot.channels.rest import RestChannel

    async def go() -> ChannelUnavailable:
        channel = RestChannel(flaky, "token", 5.0)
        try:
            await channel._post("/anything", {})
        except ChannelUnavailable as exc:
            return exc
        finally:
            await channel.close()
        raise AssertionError("no 503")

    assert asyncio.run(go()).retry_after_s == 1.0
