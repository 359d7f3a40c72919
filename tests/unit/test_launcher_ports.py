"""The launcher's private servers get the ports they had last time (issue 22, finding 4: a relaunch a minute after
Ctrl-C got new ports, because the old ones were in TIME_WAIT and the free-port check bound without SO_REUSEADDR,
although the servers themselves can bind them)."""
from __future__ import annotations

import socket

from tools.launcher.servers import choose_port


def _time_wait_on(port: int) -> None:
    """Leave a connection in TIME_WAIT on ``port`` (the side that closes first keeps it): accept one, close ours."""
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: TIME_WAIT on 127.0.0.1:port
        client.recv(1)
        client.close()


def test_a_remembered_port_in_time_wait_is_chosen_again(tmp_path) -> None:
    remembered = tmp_path / "rabbitmq.port"
    port = choose_port(remembered, (20000, 45000))
    _time_wait_on(port)
    assert choose_port(remembered, (20000, 45000)) == port
