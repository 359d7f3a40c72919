"""wms-launch refuses bad counts with a clear message and exit code 2."""
from __future__ import annotations

import pytest

from tools.launcher.launch import parse_args


def test_defaults() -> None:
    args = parse_args([])
    assert (args.pilots, args.gpu_pilots, args.channel, args.pilot_cores, args.no_dsm) == (2, 0, "rest", 1, False)


@pytest.mark.parametrize("argv, message", [
    (["--pilots", "-1"], "--pilots: must be >= 0"),
    (["--pilot-cores", "0"], "--pilot-cores: must be >= 1"),
    (["--pilot-slots", "0"], "--pilot-slots: must be >= 1"),
    (["--gpu-pilots", "two"], "'two' is not a whole number"),
    (["--channel", "smtp"], "invalid choice: 'smtp'"),
])
def test_bad_arguments(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
