"""Changes of a task's life: registration, cancel, pause, resume, reprioritisation.

Each change is one short transaction holding the guarded row update and its outbox event together.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from common.auth import Identity
from common.broker import Topology
from common.db.models import Record
from common.db.session import Database, Transaction
from common.dsm import DsmClient, DsmError
from common.messages import TaskEvent, TaskEventType, wrap
from common.outbox import add_event
from common.states import TASK_MACHINE, IllegalTransition, RowNotFound, TaskState
from services.task_manager import queries
from services.task_manager.schemas import TaskDescription
from services.task_manager.transformations import BadParameters, Transformations, resolve_args

log = logging.getLogger("wms.task_manager")


class RequestIdReused(Exception):
    """The WFMS request id names an existing task whose description differs from this one."""

    def __init__(self, request_id: str, task_id: int) -> None:
        super().__init__(f"wfms_request_id {request_id!r} already names task {task_id} with a different description")
        self.task_id = task_id


class OutputDatasetTaken(Exception):
    """The output dataset cannot take this task's outputs: it is closed in the DSM, or another active task writes
    it (two writers of one dataset would collide on its lfns and on its closing)."""

    def __init__(self, dataset: str, reason: str, task_id: int | None = None) -> None:
        super().__init__(f"output dataset {dataset!r} {reason}")
        self.dataset, self.task_id = dataset, task_id


class PayloadRefused(Exception):
    """The task's payload is not one this site runs: an unknown transformation, parameters that do not fit it,
    or a raw command while arbitrary commands are off (422)."""


class PayloadResolver:
    """Turns a task's transformation (or, only behind the development switch, its raw command) into what its
    jobs run, and the task's resources, defaulting to the transformation's."""

    def __init__(self, transformations: Transformations, allow_arbitrary_commands: bool) -> None:
        self.transformations, self.allow_arbitrary_commands = transformations, allow_arbitrary_commands

    def _image(self, name: str | None) -> str | None:
        """The path of a registry image (what the pilot's sandbox runs in); an unknown name is refused."""
        if name is None:
            return None
        if name not in self.transformations.images:
            raise PayloadRefused(f"unknown image {name!r}; this site declares "
                                 f"{', '.join(sorted(self.transformations.images)) or 'none'}")
        return self.transformations.images[name]

    def resolve(self, description: TaskDescription) -> dict[str, Any]:
        call, raw = description.transformation, description.payload
        if call is not None:
            transformation = self.transformations.get(call.name)
            if transformation is None:
                raise PayloadRefused(f"unknown transformation {call.name!r}; this site runs "
                                     f"{', '.join(self.transformations.names()) or 'none'}")
            try:
                args = resolve_args(transformation, call.parameters)
            except BadParameters as exc:
                raise PayloadRefused(str(exc)) from exc
            payload: dict[str, Any] = {"transformation": transformation.name, "parameters": call.parameters,
                       "command": transformation.executable, "args": args, "env": {},
                       "container_image": self._image(transformation.image), "network": transformation.network}
            defaults: tuple[str, int, int] = (transformation.resource_type, transformation.cores,
                                              transformation.memory_mb)
        else:
            assert raw is not None  # the description names exactly one of them
            if not self.allow_arbitrary_commands:
                raise PayloadRefused("raw commands are disabled on this site: name a transformation "
                                     "(GET /api/v1/transformations lists them)")
            payload = {"transformation": None, "parameters": {}, **raw.model_dump(mode="json"),
                       "container_image": self._image(raw.container_image)}
            defaults = ("cpu", 1, 2000)
        return {
            "payload": payload,
            "resource_type": description.resource_type or defaults[0],
            "cores": description.cores or defaults[1],
            "memory_mb": description.memory_mb or defaults[2],
        }


class TaskEnded(Exception):
    def __init__(self, task_id: int, current: str) -> None:
        super().__init__(f"task {task_id} is {current}: it can no longer be changed")
        self.current = current


def description_hash(description: TaskDescription) -> str:
    canonical = json.dumps(description.model_dump(mode="json", exclude={"wfms_request_id"}), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def row_values(description: TaskDescription, resolved: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": description.name,
        "task_type": description.type,
        "input_dataset": description.input_dataset,
        "output_dataset": description.output_dataset,
        **resolved,
        "split_by": description.split.by,
        "split_size": description.split.size,
        "max_attempts": description.max_attempts,
        "priority": description.priority,
        "wfms_request_id": description.wfms_request_id,
        "request_hash": description_hash(description),
        "metadata": description.metadata,
    }


# Each operator/WFMS command: its target state, the event announcing it, and (if narrower than the state
# machine) the states it applies to: resume only undoes a pause.
COMMANDS: dict[str, tuple[TaskState, TaskEventType, frozenset[str] | None]] = {
    "cancel": (TaskState.CANCELLED, TaskEventType.CANCELLED, None),
    "pause": (TaskState.PAUSED, TaskEventType.PAUSED, None),
    "resume": (TaskState.RUNNING, TaskEventType.RESUMED, frozenset({TaskState.PAUSED})),
}


class NotTaskOwner(Exception):
    """A wfms client may change only the tasks it submitted (403); operators may change any."""

    def __init__(self, task_id: int, caller: Identity) -> None:
        super().__init__(f"task {task_id} is not {caller.name}'s: a wfms client changes only its own tasks")


def check_owner(task: Record, caller: Identity) -> None:
    if caller.role != "operator" and task.owner != caller.name:
        raise NotTaskOwner(task.id, caller)


class TaskLifecycle:
    def __init__(self, engine: Database, topology: Topology, on_committed: Callable[[], None],
                 payloads: PayloadResolver, dsm: DsmClient | None = None) -> None:
        self.engine = engine
        self.payloads = payloads
        self.dsm = dsm
        self.exchange = topology.exchange("tasks")
        # Wakes the outbox relay once an event is committed.
        self.on_committed = on_committed

    async def _announce(self, conn: Transaction, event: TaskEventType, row: Record) -> None:
        await add_event(conn, self.exchange, event.value, wrap(event.value, TaskEvent.of(row)))

    async def register(self, description: TaskDescription, caller: Identity) -> tuple[Record, bool]:
        """Register a task owned by ``caller``; (row, created). The same WFMS request id returns the existing
        task. A task whose output dataset is another active task's output is refused (OutputDatasetTaken); so is
        one whose output dataset is closed in the DSM, when the DSM can say so now (``output_dataset_closed``)."""
        values = {**row_values(description, self.payloads.resolve(description)), "owner": caller.name}
        if description.wfms_request_id is not None:
            async with self.engine.connect() as conn:
                existing = await queries.select_task_by_request_id(conn, description.wfms_request_id)
            if existing is not None:
                if existing.request_hash != values["request_hash"]:
                    raise RequestIdReused(description.wfms_request_id, existing.id)
                return existing, False
        await self._refuse_closed_output(description.output_dataset)
        async with self.engine.begin() as conn:
            # one registration per output dataset at a time, so two cannot both pass the check below
            await queries.lock_output_dataset(conn, description.output_dataset)
            if description.wfms_request_id is not None:  # a concurrent retry of this request may have won
                existing = await queries.select_task_by_request_id(conn, description.wfms_request_id)
                if existing is not None and existing.request_hash == values["request_hash"]:
                    return existing, False
            writer = await queries.active_task_writing(conn, description.output_dataset)
            if writer is not None:
                raise OutputDatasetTaken(description.output_dataset,
                                         f"is the output of active task {writer} already", writer)
            row = await queries.insert_task(conn, values)
            if row is None:
                assert description.wfms_request_id is not None  # only that unique key can conflict
                existing = await queries.select_task_by_request_id(conn, description.wfms_request_id)
                assert existing is not None
                if existing.request_hash != values["request_hash"]:
                    raise RequestIdReused(description.wfms_request_id, existing.id)
                return existing, False
            await self._announce(conn, TaskEventType.REGISTERED, row)
            await queries.record_command(conn, row.id, caller, "submit", None)
        self.on_committed()
        return row, True

    async def input_found(self, dataset: str) -> bool | None:
        """Whether the input dataset exists in the DSM now; None when the DSM cannot say (or there is none)."""
        if self.dsm is None:
            return None
        try:
            return await self.dsm.dataset(dataset) is not None
        except DsmError as exc:
            log.warning("DSM not asked about an input dataset at registration",
                        extra={"dataset": dataset, "error": str(exc)})
            return None

    async def _refuse_closed_output(self, dataset: str) -> None:
        """A closed output dataset can take no file: refuse now rather than fail after the work. If the DSM
        cannot answer now, the task is accepted (its outputs would then be refused and the task fail with the
        DSM's reason)."""
        if self.dsm is None:
            return
        try:
            found = await self.dsm.dataset(dataset)
        except DsmError as exc:
            log.warning("DSM not asked about an output dataset at registration",
                        extra={"dataset": dataset, "error": str(exc)})
            return
        if found is not None and found.status == "closed":
            raise OutputDatasetTaken(dataset, "is closed in the DSM: it can take no more files")

    async def apply_command(self, task_id: int, command: str, caller: Identity) -> tuple[Record, bool]:
        """cancel / pause / resume by ``caller`` (its own task, or an operator); (row, changed). Repeating a
        command already in effect changes nothing. Every command is written to the task's audit trail."""
        target, event, only_from = COMMANDS[command]
        async with self.engine.begin() as conn:
            current = await queries.select_task_for_update(conn, task_id)
            if current is None:
                raise RowNotFound("task", task_id)
            check_owner(current, caller)
            try:
                row = await queries.move_task(conn, task_id, target, only_from)
            except IllegalTransition as exc:
                if exc.current != target:
                    raise
                await queries.record_command(conn, task_id, caller, command, f"already {target}")
                return current, False
            await self._announce(conn, event, row)
            await queries.record_command(conn, task_id, caller, command, f"{current.status} -> {row.status}")
        self.on_committed()
        return row, True

    async def reprioritise(self, task_id: int, priority: int, caller: Identity) -> tuple[Record, bool]:
        async with self.engine.begin() as conn:
            current = await queries.select_task_for_update(conn, task_id)
            if current is None:
                raise RowNotFound("task", task_id)
            check_owner(current, caller)
            if current.status in TASK_MACHINE.terminal:
                raise TaskEnded(task_id, current.status)
            if current.priority == priority:
                await queries.record_command(conn, task_id, caller, "reprioritise", f"already {priority}")
                return current, False
            row = await queries.update_priority(conn, task_id, priority)
            assert row is not None  # the row is locked and active
            await self._announce(conn, TaskEventType.REPRIORITISED, row)
            await queries.record_command(conn, task_id, caller, "reprioritise", f"{current.priority} -> {priority}")
        self.on_committed()
        return row, True
