"""JSON responses serialised by orjson (numpy arrays included), the app's default response
class. Endpoints return it directly, so FastAPI does not re-validate the body against the
response model (the model still documents the body in /docs)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class OrjsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
