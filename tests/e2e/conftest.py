"""Browser fixtures: Debian chromium driven by Playwright's sync API against pytest-django's live_server.

Playwright's own browser download does not work here, so the system chromium is launched by path.
Without chromium the e2e tests skip locally and fail under CI=true (CI must run them).

Playwright's sync API keeps an asyncio loop running in its thread (on a greenlet) for as long as
it is open. In the test thread that would make Django refuse every ORM call (SynchronousOnlyOperation)
and make services' `async_to_sync` realtime publishes fail. So Playwright lives on a thread of its
own and tests hold `Remote` proxies: every attribute read and call on a Playwright object runs on
that thread, and the test thread never sees an event loop.
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
DEFAULT_TIMEOUT_MS = 10_000


class PlaywrightThread:
    """One worker thread that owns Playwright: everything Playwright runs there, in order."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")

    def call(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result()

    def shutdown(self):
        self._pool.shutdown(wait=True)


def _unwrap(value):
    return object.__getattribute__(value, "_obj") if isinstance(value, Remote) else value


class Remote:
    """A Playwright object (page, locator, expect(...), a bound method) used from the test thread."""

    __slots__ = ("_obj", "_thread")

    def __init__(self, obj, thread: PlaywrightThread):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_thread", thread)

    def _wrap(self, value):
        if isinstance(value, list | tuple):
            return type(value)(self._wrap(v) for v in value)
        if callable(value) or type(value).__module__.startswith("playwright."):
            return Remote(value, self._thread)
        return value

    def __getattr__(self, name):
        return self._wrap(self._thread.call(getattr, self._obj, name))

    def __setattr__(self, name, value):
        self._thread.call(setattr, self._obj, name, _unwrap(value))

    def __call__(self, *args, **kwargs):
        args = [_unwrap(a) for a in args]
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return self._wrap(self._thread.call(self._obj, *args, **kwargs))

    def __enter__(self):  # e.g. `with page.expect_request(...) as info:`
        return self._wrap(self._thread.call(self._obj.__enter__))

    def __exit__(self, *exc_info):
        return self._thread.call(self._obj.__exit__, *exc_info)

    def __repr__(self):
        return f"Remote({self._obj!r})"


def _chromium_path() -> str | None:
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    path = _chromium_path()
    if path is None:
        reason = "Debian chromium is not installed (apt-get install chromium); the e2e tests need it"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " and CI=true", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def playwright_thread(chromium_executable):
    """Playwright and one headless chromium per test module, always stopped (2 shared cores)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    thread = PlaywrightThread()
    try:
        pw = thread.call(lambda: sync_api.sync_playwright().start())
        try:
            browser = thread.call(
                pw.chromium.launch, executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield thread, browser, sync_api.expect
            finally:
                thread.call(browser.close)
        finally:
            thread.call(pw.stop)
    finally:
        thread.shutdown()


@pytest.fixture
def expect(playwright_thread):
    """Playwright's `expect`, run on the Playwright thread (auto-retrying assertions)."""
    thread, _, expect = playwright_thread
    return Remote(expect, thread)


@pytest.fixture
def page(playwright_thread, live_server):
    """A fresh context (no cookies) per test on live_server; `page.problems` collects page errors,
    console errors and HTTP errors (tests assert it stays empty)."""
    thread, browser, _ = playwright_thread

    def open_page():
        context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        page = context.new_page()
        page.problems = problems = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
        return context, page

    context, page = thread.call(open_page)
    try:
        yield Remote(page, thread)
    finally:
        thread.call(context.close)


@pytest.fixture
def artifacts_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def operator(db):
    from tests.factories import UserFactory

    return UserFactory(username="operator", password="right-password")


@pytest.fixture
def logged_in_page(page, operator):
    """`page` signed in through the login form, on the fleet page."""
    page.goto("/login/?next=/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "right-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_url("**/")
    return page
