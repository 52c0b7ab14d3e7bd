"""Retries of transient object-store failures: exponential backoff, full jitter, one budget.

A request that fails with a 5xx, a timeout or a reset connection is tried again after a
random pause in ``[0, min(max_delay, base * 2**attempt)]`` ("full jitter": many writers that
failed together do not come back together), until the *total* time spent on that request
passes ``budget`` seconds; then :class:`~engine.errors.TransientStoreError` says what was
tried, where, how often and for how long, and the backup fails with that ``fail_reason``.
Permanent failures (403, a wrong key, a missing container) are never retried.

The budget comes from the caller, or ``$CINDERBLOCK_STORE_RETRY_SECONDS`` (default 60 s):
long enough to ride out a proxy restart, short enough that a dead endpoint fails a job in
about a minute rather than hanging it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import TransientStoreError

T = TypeVar("T")
DEFAULT_BUDGET = 60.0
ENV_BUDGET = "CINDERBLOCK_STORE_RETRY_SECONDS"


class Transient(Exception):
    """Raised by a store's request function for a failure worth retrying; ``detail`` is a
    secret-free description (status, error class) for the final message."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class RetryPolicy:
    budget: float = DEFAULT_BUDGET  # seconds, total, per request
    base: float = 0.1  # first pause bound
    max_delay: float = 5.0  # no pause longer than this

    def __post_init__(self) -> None:
        for name in ("budget", "base", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"retry {name} must be a non-negative number, got {value!r}")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        raw = os.environ.get(ENV_BUDGET)
        if raw is None or raw == "":
            return cls()
        try:
            budget = float(raw)
        except ValueError:
            raise ValueError(f"${ENV_BUDGET} must be a number of seconds, got {raw!r}") from None
        return cls(budget=budget)

    def run(
        self,
        fn: Callable[[], T],
        what: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """``fn()``, again after each :class:`Transient` while the budget lasts."""
        start = clock()
        attempt = 0
        while True:
            try:
                return fn()
            except Transient as e:
                attempt += 1
                spent = clock() - start
                pause = random.uniform(0, min(self.max_delay, self.base * 2 ** (attempt - 1)))
                if spent + pause > self.budget:
                    raise TransientStoreError(
                        f"{what} failed {attempt} time(s) over {spent:.1f} s, giving up after "
                        f"the retry budget of {self.budget:g} s (${ENV_BUDGET}); last error: "
                        f"{e.detail}"
                    ) from None
                sleep(pause)
