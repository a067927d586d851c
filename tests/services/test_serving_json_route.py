"""OrjsonRoute (services/serving/json_route.py) answers score bodies as FastAPI's own route
does: the same value for what orjson parses, the same status and error locations for what it
refuses but the standard library's json accepts (NaN, Infinity, lone surrogates), for what
neither parses, and for integers past 64 bits (orjson reads them as floats, which the
schema's strict integers refuse where json.loads' ints fail their int64 bounds)."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from services.serving.json_route import OrjsonRoute
from services.serving.schemas import ScoreRequest


def _app(route_class: type | None) -> TestClient:
    router = APIRouter(route_class=route_class) if route_class else APIRouter()

    @router.post("/echo")
    async def echo(req: ScoreRequest) -> dict[str, object]:
        return req.model_dump()

    app = FastAPI()
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def locs(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"locs": [list(e["loc"]) for e in exc.errors()]}, status_code=422)

    return TestClient(app)


def _item(value: str) -> bytes:
    return b'{"model": "m", "items": [{"features": {"f": ' + value.encode() + b'}}]}'


BODIES = [
    _item('"caf\\u00e9"'),
    _item("9223372036854775807"),
    _item("1180591620717411303424"),  # 2^70: an int to json.loads, a float to orjson
    _item('"\\ud800"'),  # a lone surrogate: json.loads only
    _item("1.5"),  # neither a string nor an int
    b'{"model": "m", "items": [{"ids": {"f": 1}}], "dense": {"d": NaN}}',  # json.loads only
    b'{"model": "m", "items": [{"ids": {"f": 1}, "dense": {"d": Infinity}}]}',
    b'{"model": "m", "items": [{"ids": {"f": 1}}], "dense": {"d": 1180591620717411303424}}',
    b'{"model": "m", "items": [{"ids": {"f": 1}}], "model": "n"}',  # the last key wins
    b'{"model": "m", "items": [],}',  # neither parses
    b'[1, 2',
]


@pytest.mark.parametrize("body", BODIES)
def test_orjson_route_answers_as_fastapi_does(body: bytes) -> None:
    plain, fast = _app(None), _app(OrjsonRoute)
    headers = {"content-type": "application/json"}
    want = plain.post("/echo", content=body, headers=headers)
    got = fast.post("/echo", content=body, headers=headers)
    assert (got.status_code, got.json()) == (want.status_code, want.json())
