"""The endpoint's error bodies: one line, no Python object repr (it says nothing to a client and shows an address
of the server's memory)."""

from __future__ import annotations

import json


def test_an_error_body_is_one_line_without_object_reprs():
    from jobs.serving.app import error

    message = "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c4d50>\n  try another"
    response = error(400, message, {"a": "b"})
    assert json.loads(response.body) == {"error": "cannot identify image file the upload try another"}
    assert response.status_code == 400 and response.headers["a"] == "b"
