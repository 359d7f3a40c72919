"""Reading what pilots staged (issue 21, findings 1 and 2): a pilot that swaps a directory of its attempt for a
symlink to /proc/self while the task-manager reads its log must never get the reader's own environment
(realpath-then-open guarded only the last component); the job-executor's verification never skips a file
whose path leaves the storage root, nor a hard link."""
from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path
from types import SimpleNamespace

from services.job_executor.oversight import verify_on_storage
from services.task_manager.operations import read_storage_file

SWAPS = 3000


def test_a_directory_swapped_for_a_symlink_never_leads_outside_the_storage(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    logs = root / "out.x" / "7" / "1" / "logs"
    logs.mkdir(parents=True)
    (logs / "environ").write_bytes(b"harmless log\n")
    real = logs.with_name("logs.real")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(logs, real)
            os.symlink("/proc/self", logs)
            os.unlink(logs)
            os.rename(real, logs)

    swapper = threading.Thread(target=swap)
    swapper.start()
    answers = []
    try:
        for _ in range(SWAPS):
            answers.append(read_storage_file(f"file://{logs}/environ", str(root), 4096))
    finally:
        stop.set()
        swapper.join()
    leaked = [a for a in answers if a not in (None, b"harmless log\n")]
    assert not leaked, leaked[:1]
    assert b"harmless log\n" in answers  # it did read the real log between swaps


def staged(root: Path, name: str, data: bytes, file_id: int, size: int | None = None, checksum: str | None = None):
    return SimpleNamespace(id=file_id, url=f"file://{root}/out.x/7/1/{name}", size=len(data) if size is None else size,
                           adler32=checksum or f"{zlib.adler32(data) & 0xFFFFFFFF:08x}")


def test_verification_refuses_links_and_never_skips(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    attempt = root / "out.x" / "7" / "1"
    attempt.mkdir(parents=True)
    (attempt / "good").write_bytes(b"good data")
    (attempt / "o1").symlink_to("/etc/passwd")
    (attempt / "shared").write_bytes(b"shared")
    os.link(attempt / "shared", tmp_path / "elsewhere")
    outside = SimpleNamespace(id=4, url=f"file://{tmp_path}/elsewhere", size=6, adler32="deadbeef")
    rows = [staged(root, "good", b"good data", 1), staged(root, "o1", b"", 2, size=999, checksum="deadbeef"),
            staged(root, "shared", b"shared", 3), outside]
    refused = verify_on_storage(rows, str(root))
    assert set(refused) == {2, 3, 4}, refused
    assert "o1" in refused[2] and "hard link" in refused[3] and "not under the storage root" in refused[4]


def test_removing_an_attempts_files_never_follows_a_link(tmp_path) -> None:
    """remove_beneath (what a lost attempt left): a link on the way or inside leads nowhere outside the root."""
    from common.storage import remove_beneath

    root, outside = tmp_path / "storage", tmp_path / "outside"
    (outside / "7" / "1").mkdir(parents=True)
    (outside / "7" / "1" / "precious").write_text("keep")
    root.mkdir()
    (root / "ds").symlink_to(outside)  # a swapped component
    remove_beneath(f"file://{root}/ds/7/1/", str(root))
    assert (outside / "7" / "1" / "precious").read_text() == "keep"

    attempt = root / "real" / "7" / "1"
    attempt.mkdir(parents=True)
    (attempt / "a.out.part").write_text("half")
    (attempt / "escape").symlink_to(outside)  # a link inside: removed as a link, its target kept
    remove_beneath(f"file://{root}/real/7/1/", str(root))
    assert not attempt.exists() and (outside / "7" / "1" / "precious").read_text() == "keep"
    remove_beneath(f"file://{root}/real/7/1/", str(root))  # gone already: nothing to do
