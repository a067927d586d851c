"""Model names: the one rule every process checks a model name against.

A model name M is 1..64 of [A-Za-z0-9_.-]: it is spelled into Redis keys (`chunkrec:{M}:...`,
redis_keys.py), so it can hold neither the key separator ':' nor whitespace.

    check_model_name("fiited")      -> "fiited"
    check_model_name("bad:name")    -> ValueError
    class Body(BaseModel): model: ModelName     # the same rule, as a pydantic field
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN, examples=["fiited", "fixed64"])]

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


def check_model_name(model: str) -> str:
    """`model` when it is a valid model name; raises ValueError otherwise."""
    if not _MODEL_NAME.match(model):
        raise ValueError(f"model name {model!r}: expected 1..64 of [A-Za-z0-9_.-]")
    return model
