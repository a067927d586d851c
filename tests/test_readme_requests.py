"""Every curl request in the README's "Talking to it with curl" has a body the endpoint's
request schema accepts, at a path the apps serve."""

from __future__ import annotations

import json
import re
from pathlib import Path

from services.experiments.router.app import create_app as create_router
from services.experiments.router.schemas import ExperimentCreate, FeedbackRequest, RankRequest
from services.serving.app import create_app as create_serving
from services.serving.schemas import ScoreRequest
from storage.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"/v1/score": ScoreRequest, "/v1/experiments": ExperimentCreate,
           "/v1/rank": RankRequest, "/v1/feedback": FeedbackRequest}


def test_readme_curl_bodies_match_the_schemas() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Talking to it with curl"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    calls = re.findall(r"^curl .*?localhost:\d+(/\S+)(.*)$", block, re.M)
    assert len(calls) == 5
    routes = {path for app in (create_router(Settings()), create_serving(Settings()))
              for path in app.openapi()["paths"]}
    checked = set()
    for path, rest in calls:
        template = re.sub(r"/\d+/", "/{experiment_id}/", path)
        assert template in routes, path
        body = re.search(r"-d '(.*)'", rest)
        if body is not None:
            SCHEMAS[path].model_validate(json.loads(body.group(1)))
            checked.add(path)
    assert checked == set(SCHEMAS)
