"""How a client of ours waits after a 503 or 429 (the CLI, the DSM client where it may wait): bounded, jittered,
honouring the server's Retry-After."""
from __future__ import annotations

RETRY_AFTER_MAX_S = 30.0
OWN_BACKOFF_MAX_S = 10.0


def retry_wait_s(retry_after: str | None, attempt: int, jitter: float) -> float:
    """Seconds to wait before asking again: the server's Retry-After (seconds, capped at RETRY_AFTER_MAX_S) when it
    gave one, else 1 s doubling per attempt (1-based) up to OWN_BACKOFF_MAX_S; plus ``jitter`` (a random fraction
    in [0, 1) the caller draws) of up to half a second, so that clients do not all come back at once."""
    own = min(2.0 ** max(attempt - 1, 0), OWN_BACKOFF_MAX_S)
    try:
        base = min(max(float(retry_after), 0.0), RETRY_AFTER_MAX_S) if retry_after else own
    except ValueError:  # an HTTP date, or junk: our own backoff
        base = own
    return base + 0.5 * jitter
