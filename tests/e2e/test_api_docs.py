"""The API's documentation in Chromium: Swagger UI and Redoc render every operation from the app's own
assets (no CDN: nothing outside loopback is reachable), with no failed request or console error, and
the browser's own request for /favicon.ico finds the console's icon."""

from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import login
from tests.factories import make_user

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anydb, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def outside_requests() -> list[str]:
    return []


@pytest.fixture
def docs_reader(new_page, outside_requests):
    """A signed-in viewer's page; every request it makes that leaves loopback lands in `outside_requests`."""
    make_user("viewer", username="vic", password="right-password")
    page = new_page()
    page.on("request", lambda r: outside_requests.append(r.url) if _outside(r.url) else None)
    return login(page, "vic")


def _outside(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in ("127.0.0.1", "localhost")


def test_swagger_ui_lists_the_operations(docs_reader, outside_requests, expect):
    docs_reader.goto("/api/docs/")
    expect(docs_reader.locator(".swagger-ui .info .title")).to_contain_text("GPU Console API")
    operations = docs_reader.locator(".opblock-summary-path")
    expect(operations.filter(has_text="/api/v1/containers")).to_have_count(1)
    expect(operations.filter(has_text="/api/v1/leases/{id}")).not_to_have_count(0)
    docs_reader.locator(".opblock-post .opblock-summary").filter(has_text="/api/v1/containers").click()
    expect(docs_reader.locator(".opblock-post.is-open")).to_contain_text("container-url")
    assert docs_reader.problems == [] and outside_requests == []


def test_redoc_renders_the_reference(docs_reader, outside_requests, expect):
    docs_reader.goto("/api/redoc/")
    expect(docs_reader.locator("h1")).to_contain_text("GPU Console API")
    expect(docs_reader.get_by_text("/api/v1/containers").first).to_be_attached()
    assert docs_reader.problems == [] and outside_requests == []


def test_the_browser_finds_an_icon_on_pages_that_name_none(docs_reader, outside_requests):
    answer = docs_reader.goto("/favicon.ico")
    assert answer.status == 200 and answer.url.endswith("/static/console/favicon.svg")
    assert answer.header_value("content-type").startswith("image/svg+xml")
    assert docs_reader.problems == [] and outside_requests == []
