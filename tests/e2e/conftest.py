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
import threading
import time
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


class AsgiLiveServer:
    """The project's ASGI application (HTTP and websockets) under daphne, on a thread of this process,
    so it shares the test database as pytest-django's live_server does (which speaks only WSGI, so no
    websockets). Twisted's reactor runs once per process: one server for the whole session."""

    def __init__(self):
        import asyncio

        from daphne import server as daphne_server
        from twisted.internet import reactor

        from console.asgi import application

        self.reactor = reactor
        self.server = daphne_server.Server(application=application, endpoints=["tcp:port=0:interface=127.0.0.1"],
                                           signal_handlers=False)
        loop = daphne_server.twisted_loop

        def run():
            asyncio.set_event_loop(loop)
            self.server.run()

        self.thread = threading.Thread(target=run, name="asgi-live-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.listening_addresses:
            if time.monotonic() > deadline:
                raise RuntimeError("daphne did not start listening")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.server.listening_addresses[0][1]}"

    def stop(self):
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def asgi_live_server(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        server = AsgiLiveServer()
        try:
            yield server
        finally:
            from console import relay

            relay.stop_all()
            server.stop()


@pytest.fixture
def live_url(asgi_live_server, transactional_db):
    return asgi_live_server.url


@pytest.fixture
def new_page(playwright_thread, live_url):
    """Open pages in fresh browser contexts (no shared cookies): `new_page()` → a `Remote` page with
    `page.problems` (page errors, console errors, HTTP errors ≥ 400) that tests assert stay empty."""
    thread, browser, _ = playwright_thread
    contexts = []

    def open_page(viewport=(1280, 800)):
        context = browser.new_context(base_url=live_url, viewport={"width": viewport[0], "height": viewport[1]})
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        page = context.new_page()
        page.problems = problems = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
        contexts.append(context)
        return page

    yield lambda **kw: Remote(thread.call(open_page, **kw), thread)
    for context in contexts:
        thread.call(context.close)


CONTRAST_JS = (Path(__file__).parent / "contrast.js").read_text()


def low_contrast_text(page) -> list[str]:
    """Visible text on the page under WCAG AA contrast against what it is painted on (4.5:1, 3:1 for
    large text; text over a pattern or gradient is not judged): one line per element."""
    return page.evaluate(CONTRAST_JS)


def login(page, username, password="right-password"):
    page.goto("/login/?next=/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("#login-form button[type=submit]")
    page.wait_for_url("**/")
    return page


@pytest.fixture
def page(playwright_thread, live_url):
    """A fresh context (no cookies) per test on the ASGI live server; `page.problems` collects page
    errors, console errors and HTTP errors (tests assert it stays empty)."""
    thread, browser, _ = playwright_thread

    def open_page():
        context = browser.new_context(base_url=live_url, viewport={"width": 1280, "height": 800})
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
    from tests.factories import make_user

    return make_user("support", username="operator", password="right-password")


@pytest.fixture
def logged_in_page(page, operator):
    """`page` signed in through the login form, on the fleet page."""
    page.goto("/login/?next=/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "right-password")
    page.click("#login-form button[type=submit]")
    page.wait_for_url("**/")
    return page
