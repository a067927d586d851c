"""`OrjsonRoute`: a FastAPI route class whose request bodies are parsed by orjson.

FastAPI parses a JSON body with the standard library's `json.loads` (through Starlette's
`Request.json`), a third of the parse-and-validate cost of a 100-candidate score request.
orjson refuses some of what `json.loads` accepts (NaN, Infinity, lone surrogates): a body
orjson refuses is parsed again by `json.loads`, so it gets the value, or the 422, it got
before. One difference stays: orjson reads an integer past 64 bits as a float, `json.loads` as
an int; the score schema's IDs are strict int64s, so either is a 422 at the same location
(tests/services/test_serving_json_route.py), and a dense value becomes the same float.

    router = APIRouter(route_class=OrjsonRoute)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:
                self._json = json.loads(body)  # its value or its error, as before
        return self._json


class OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def orjson_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return orjson_handler
