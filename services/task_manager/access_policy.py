"""Who may do what on the task-manager API. Pilots have no business here."""
from __future__ import annotations

from common.auth import require_identity, require_role

READ_TASKS = require_role("read tasks", {"wfms", "operator"})
SUBMIT_TASKS = require_identity("submit tasks", {"wfms", "operator"})
# Cancel and reprioritise are the WFMS's own decisions (a wfms client's on its own tasks only: the domain checks
# the owner, lifecycle.check_owner); pause/resume is an operational action.
CHANGE_TASKS = require_identity("cancel or reprioritise tasks", {"wfms", "operator"})
OPERATE_TASKS = require_identity("pause or resume tasks", {"operator"})
MANAGE_PILOT_CREDENTIALS = require_role("issue, list or revoke pilot credentials", {"operator"})
