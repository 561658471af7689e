"""A task queue the test drains by hand, standing in for the Celery worker."""

from __future__ import annotations

from console import dispatch


class TaskQueue:
    """Collects what services enqueue; `run()` executes it in order, like a worker would."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, tuple]] = []
        self.ran: list[tuple[str, tuple]] = []

    def enqueue(self, name: str, *args) -> None:
        self.queued.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.queued]

    def run(self, limit: int = 500, skip: tuple[str, ...] = ()) -> int:
        done = 0
        while self.queued and done < limit:
            name, args = self.queued.pop(0)
            if name in skip:
                continue
            self.ran.append((name, args))
            # Not throw=True: an eager task's retries only run when apply() is left to catch the Retry.
            result = dispatch.task(name).apply(args=args)
            if result.failed():
                raise result.result
            done += 1
        return done
