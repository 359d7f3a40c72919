"""How a client of ours waits after a 503 or 429 (the CLI, the DSM client where it may wait, pilots): bounded,
jittered, honouring the server's Retry-After."""
from __future__ import annotations

RETRY_AFTER_MAX_S = 30.0
OWN_BACKOFF_MAX_S = 10.0


def seconds_of(value: object) -> float | None:
    """Seconds from a Retry-After header (or a number in a body); None for anything else (an HTTP date, junk, a
    negative or absurd value)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < 86_400 else None


def retry_wait_s(retry_after: str | None, attempt: int, jitter: float) -> float:
    """Seconds to wait before asking again: the server's Retry-After (seconds, capped at RETRY_AFTER_MAX_S) when it
    gave one, else 1 s doubling per attempt (1-based) up to OWN_BACKOFF_MAX_S; plus ``jitter`` (a random fraction
    in [0, 1) the caller draws) of up to half a second, so that clients do not all come back at once."""
    asked = seconds_of(retry_after)
    base = min(asked, RETRY_AFTER_MAX_S) if asked is not None else min(2.0 ** max(attempt - 1, 0), OWN_BACKOFF_MAX_S)
    return base + 0.5 * jitter
