"""The API's JSON renderer (orjson) writes what DRF's JSONRenderer writes."""

import datetime
import decimal
import json
import uuid
from zoneinfo import ZoneInfo

import pytest
from django.utils.functional import lazy
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.exceptions import ErrorDetail
from rest_framework.renderers import JSONRenderer

from console.api_json import OrjsonRenderer

drf, ours = JSONRenderer(), OrjsonRenderer()

# Everything but floats, whose exponent forms the two write differently (1e+23 against 1e23: the same number).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_the_same_bytes_as_drf_for_any_json_document(data):
    assert ours.render(data) == drf.render(data)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_read_back_the_same(value):
    assert json.loads(ours.render({"seconds": value})) == json.loads(drf.render({"seconds": value}))


def test_what_drf_s_encoder_writes_is_written_the_same():
    data = {
        "created_at": datetime.datetime(2026, 11, 30, 18, 0, 1, 250000, tzinfo=datetime.UTC),  # "Z", as DRF
        "in_berlin": datetime.datetime(2026, 11, 30, 19, 0, tzinfo=ZoneInfo("Europe/Berlin")),
        "day": datetime.date(2026, 11, 30),
        "price": decimal.Decimal("1.50"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "lazy": lazy(lambda: "translated later", str)(),
        "error": [ErrorDetail("This field is required.", code="required")],
        "separators": "line\u2028paragraph\u2029end",  # escaped: valid JSON, not valid JavaScript
        7: "a key that is a number",
        "tuple": (1, 2),
    }
    assert ours.render(data) == drf.render(data)
    assert b'"created_at":"2026-11-30T18:00:01.250000Z"' in ours.render(data)


def test_what_orjson_cannot_write_falls_back_to_drf():
    assert ours.render({"big": 2**70}) == drf.render({"big": 2**70}) == b'{"big":1180591620717411303424}'
    with pytest.raises(TypeError, match="keys must be"):  # DRF's own error, not orjson's
        ours.render({(1, 2): "a tuple key"})


def test_an_asked_for_indent_is_drf_s():
    data = {"a": [1, {"b": None}]}
    assert ours.render(data, "application/json; indent=4") == drf.render(data, "application/json; indent=4")
    assert b"\n    " in ours.render(data, "application/json; indent=4")


def test_nothing_is_an_empty_body():
    assert ours.render(None) == b""


def test_api_answers_are_rendered_by_it():
    from rest_framework.settings import api_settings

    renderers = api_settings.DEFAULT_RENDERER_CLASSES
    assert renderers == [OrjsonRenderer]
