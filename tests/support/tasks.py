"""A task queue the test drains by hand, standing in for the Celery worker."""

from __future__ import annotations

import threading

from console import correlation, dispatch
from tests.support.boots import follow_boots_now


class _Args(tuple):
    """A task's arguments, with the correlation id it was sent under (as console.dispatch sends it)."""

    correlation = ""

    def __new__(cls, args: tuple, correlation_id: str):
        obj = super().__new__(cls, args)
        obj.correlation = correlation_id
        return obj


class TaskQueue:
    """Collects what services enqueue; `run()` executes it in order, like a worker would."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, tuple]] = []
        self.ran: list[tuple[str, tuple]] = []

    def enqueue(self, name: str, *args) -> None:
        self.queued.append((name, _Args(args, correlation.current())))

    def names(self) -> list[str]:
        return [name for name, _ in self.queued]

    def run(self, limit: int = 500, skip: tuple[str, ...] = (), parallel: tuple[str, ...] = (),
            boots: bool = True) -> int:
        """Run what is queued, in order. Tasks named in `parallel` run as a worker pool runs them:
        every queued one of that name at once, each in its own thread (and database connection).
        `boots`: once the queue is empty, follow the VM boots leases wait on, as the node watcher
        process would (tests/support/boots.py), and go on with what that enqueued."""
        done = self._run(limit, skip, parallel)
        while boots and done < limit and follow_boots_now():
            done += self._run(limit - done, skip, parallel)
        return done

    def _run(self, limit: int, skip: tuple[str, ...], parallel: tuple[str, ...]) -> int:
        done = 0
        while self.queued and done < limit:
            name, args = self.queued.pop(0)
            if name in skip:
                continue
            if name in parallel:
                batch = [args] + [a for n, a in self.queued if n == name]
                self.queued = [(n, a) for n, a in self.queued if n != name]
                self._run_threads(name, batch)
                done += len(batch)
                continue
            self._apply(name, args)
            done += 1
        return done

    def _apply(self, name: str, args: tuple) -> None:
        self.ran.append((name, args))
        # Not throw=True: an eager task's retries only run when apply() is left to catch the Retry.
        result = dispatch.task(name).apply(args=tuple(args),
                                           headers={correlation.HEADER: getattr(args, "correlation", "")})
        if result.failed():
            raise result.result

    def _run_threads(self, name: str, batch: list[tuple]) -> None:
        from django.db import connection

        errors: list[BaseException] = []

        def one(args: tuple) -> None:
            try:
                self._apply(name, args)
            except BaseException as exc:  # raised below, in the test's thread
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=one, args=(args,)) for args in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if errors:
            raise errors[0]
