"""Cursor pagination for the API: a cursor the client mangled is its error (400, naming `cursor`),
not a missing page (DRF answers 404). Infrastructure: imports no app."""

from __future__ import annotations

from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError


class CursorPagination(pagination.CursorPagination):
    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except NotFound as exc:  # DRF's only reason: the cursor does not decode
            raise ValidationError(
                {self.cursor_query_param: ["Not a cursor this API gave out: follow the `next` or `previous` link."]},
                code="invalid_cursor") from exc
