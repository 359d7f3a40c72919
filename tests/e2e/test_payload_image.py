"""A transformation that names an image of the site's registry runs in it: the sandbox makes the image (an
unpacked root filesystem, here a busybox-static one built by the test) the payload's /, with the attempt's
directory and inputs bound in, as the payload user, and without a network when the transformation says so."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from common.db.models import files
from tests.conftest import wait_for
from tests.e2e.stack import WFMS, wms_stack

pytestmark = pytest.mark.e2e
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "id", "wc", "echo")
SCRIPT = ('for f; do wc -c < "$f"; done > "$WMS_OUTPUT_DIR/count"; ls / > "$WMS_OUTPUT_DIR/root"; '
          'id -u > "$WMS_OUTPUT_DIR/uid"; cat /proc/net/dev > "$WMS_OUTPUT_DIR/net"')


def busybox_root(directory: Path) -> Path:
    """A minimal image: a static busybox and a few applets, nothing of the node."""
    (directory / "bin").mkdir(parents=True)
    (directory / "etc").mkdir()
    (directory / "etc" / "image-release").write_text("busybox test image\n")
    shutil.copy2(BUSYBOX, directory / "bin" / "busybox")
    for applet in APPLETS:
        (directory / "bin" / applet).symlink_to("busybox")
    return directory


@pytest.mark.skipif(not BUSYBOX.exists(), reason="needs busybox-static (scripts/setup installs it)")
async def test_a_task_runs_in_its_transformations_image(settings, db, tmp_path) -> None:
    image = busybox_root(tmp_path / "images" / "busybox")
    registry = tmp_path / "transformations.json"
    registry.write_text(json.dumps({
        "images": {"busybox": str(image)},
        "transformations": [{"name": "bb-count", "executable": "/bin/sh", "args": ["-c", SCRIPT, "sh", "{inputs}"],
                             "image": "busybox", "network": False, "memory_mb": 100}]}))
    async with wms_stack(settings, db, tmp_path, transformations_file=str(registry)) as stack:
        await stack.make_dataset("raw.image", 2, content=b"twelve bytes")
        refused = await stack.task_manager.post("/api/v1/tasks", headers=WFMS, json={
            "name": "a path", "type": "t", "input_dataset": "raw.image", "output_dataset": "out.path",
            "payload": {"command": "/bin/sh", "container_image": "/srv/anything"}, "split": {"by": "files", "size": 1}})
        assert refused.status_code == 422
        unknown = await stack.task_manager.post("/api/v1/tasks", headers=WFMS, json={
            "name": "unknown", "type": "t", "input_dataset": "raw.image", "output_dataset": "out.unknown",
            "payload": {"command": "/bin/sh", "container_image": "nosuchimage"}, "split": {"by": "files", "size": 1}})
        assert unknown.status_code == 422 and "unknown image" in unknown.text
        response = await stack.task_manager.post("/api/v1/tasks", headers=WFMS, json={
            "name": "in an image", "type": "t", "input_dataset": "raw.image", "output_dataset": "out.image",
            "transformation": {"name": "bb-count"}, "split": {"by": "files", "size": 2}})
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        stack.start_pilot("rest")
        await wait_for(lambda: stack.ended(task_id), timeout=60)
        assert (await stack.task(task_id)).status == "done"
        async with db.connect() as conn:
            urls = dict((await conn.execute(sa.select(files.c.lfn, files.c.url).where(
                files.c.task_id == task_id, files.c.role == "output"))).all())
    produced = {lfn.rsplit("/", 1)[1]: Path(url.removeprefix("file://")).read_text() for lfn, url in urls.items()}
    assert produced["count"].split() == ["12", "12"]  # both inputs, read-only inside the image
    root = set(produced["root"].split())
    assert {"bin", "etc", "wms", "proc", "dev", "tmp"} <= root and not root & {"usr", "work", "root", "home"}
    assert produced["uid"].strip() == ("65534" if os.geteuid() == 0 else produced["uid"].strip())
    interfaces = [line.split(":")[0].strip() for line in produced["net"].splitlines()[2:]]
    assert interfaces == ["lo"]  # network: false
