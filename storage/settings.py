"""The one Settings object (env prefix CHUNKREC_). Read once by the entry points and passed in;
no other module reads os.environ."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHUNKREC_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".cache" / "chunkrec",
        description="cache for fetched data sets (movielens-100k) and run artefacts",
    )
    shared_data_dir: Path = Field(
        default=Path(__file__).resolve().parents[2] / "shared" / "data",
        description="where the real sample data sets live (../shared/data beside the repo)",
    )
    batch_size: int = 1024
    seed: int = 0


def get_settings() -> Settings:
    return Settings()
