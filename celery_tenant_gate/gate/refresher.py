"""Look-ups that the worker's consumer does not wait for: run in a small pool of
background threads, one at a time per tenant."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)


class Refresher:
    """Runs ``job()`` for a tenant in a background thread, unless one runs or waits
    for that tenant already (single-flight). At most *threads* run at once; the others
    wait their turn (one entry per tenant at most). A failing job is logged, never
    raised: a background thread has no caller to tell."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, context_id: str, job: Callable[[], object]) -> bool:
        """Run *job* for *context_id* soon. False when one is under way already."""
        with self._lock:
            if context_id in self._busy:
                return False
            self._busy.add(context_id)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.threads, thread_name_prefix="tenant-gate-refresh"
                )
            pool = self._pool
        try:
            pool.submit(self._run, context_id, job)
        except RuntimeError:  # shut down meanwhile
            self._done(context_id)
            return False
        return True

    def busy(self, context_id: str) -> bool:
        """Whether a job for *context_id* runs or waits."""
        return context_id in self._busy

    def shutdown(self) -> None:
        """Cancel what waits (a job under way finishes in its thread); a later
        :meth:`submit` starts over."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._busy = set()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def after_fork(self) -> None:
        """In a new child process: the parent's threads do not exist here."""
        self._pool = None
        self._busy = set()
        self._lock = threading.Lock()

    def _run(self, context_id: str, job: Callable[[], object]) -> None:
        try:
            job()
        except Exception:
            logger.exception("tenant-gate: looking up %s in the background failed", context_id)
        finally:
            self._done(context_id)

    def _done(self, context_id: str) -> None:
        with self._lock:
            self._busy.discard(context_id)
