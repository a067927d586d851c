"""A local Redis Cluster: N masters (no replicas) on free ports, for tests, benches and
`chunkrec up --redis-cluster N`.

    with start_redis_cluster(3, log_dir=tmp) as cluster:
        cluster.url            # "redis://127.0.0.1:PORT/0": any node; clients discover the rest
        RedisCluster.from_url(cluster.url)

Each node is a `redis-server --cluster-enabled yes` (persistence off, its own folder for
nodes.conf) started by infra's `_spawn`; `redis-cli --cluster create` assigns the 16384 slots;
ready means every node answers CLUSTER INFO with cluster_state:ok. `stop()` ends exactly the
processes it started.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services.stack.infra import (
    READY_TIMEOUT_S,
    InfraError,
    ManagedProcess,
    _spawn,
    free_port,
    listpack_args,
    redis_server_binary,
    wait_until,
)


@dataclass
class RedisClusterProcs:
    nodes: list[ManagedProcess]
    data_dir: Path
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    name: str = "redis-cluster"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @property
    def address(self) -> str:
        return self.nodes[0].address

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)

    def stop(self, grace_s: float = 10.0) -> None:
        for n in self.nodes:
            n.stop(grace_s)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisClusterProcs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _cluster_ok(port: int) -> bool:
    import redis

    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as r:
            info = r.execute_command("CLUSTER INFO")
    except (redis.RedisError, OSError):
        return False
    if isinstance(info, dict):  # redis-py parses the reply
        return str(info.get("cluster_state")) == "ok"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def _cluster_port(tries: int = 200) -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too."""
    import socket

    for _ in range(tries):
        p = free_port()
        if p > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise InfraError("no free port pair (P, P + 10000) for a cluster node")


def start_redis_cluster(masters: int = 3, log_dir: Path | None = None,
                        data_dir: Path | None = None,
                        deadline_s: float = READY_TIMEOUT_S) -> RedisClusterProcs:
    """`masters` cluster nodes with the slots spread over them, ready (see module docstring)."""
    import redis

    binary = redis_server_binary()
    cli = shutil.which("redis-cli") or str(binary.with_name("redis-cli"))
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="chunkrec-cluster-")
        data_dir = Path(tmp.name)
    procs = RedisClusterProcs([], data_dir, tmp)
    try:
        for _ in range(max(1, masters)):
            p = _cluster_port()
            node_dir = data_dir / str(p)
            node_dir.mkdir(parents=True, exist_ok=True)
            cmd = [str(binary), "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--protected-mode", "no", "--cluster-enabled", "yes",
                   "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir",
                   str(node_dir), *listpack_args(binary)]
            mp = _spawn("redis", cmd, p, log_dir)
            procs.nodes.append(mp)

            def ping(p: int = p) -> bool:
                try:
                    with redis.Redis(host="127.0.0.1", port=p, socket_timeout=1) as r:
                        return bool(r.ping())
                except (redis.RedisError, OSError):
                    return False

            wait_until(ping, deadline_s, f"redis cluster node on {p}", mp.alive)
        if len(procs.nodes) == 1:  # a one-node cluster: redis-cli wants 3 masters
            slots = [str(s) for s in range(16384)]
            with redis.Redis(host="127.0.0.1", port=procs.nodes[0].port) as r:
                r.execute_command("CLUSTER ADDSLOTS", *slots)
        else:
            out = subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in procs.nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=deadline_s, check=False)
            if out.returncode != 0:
                raise InfraError(f"redis-cli --cluster create failed: {out.stdout[-2000:]}"
                                 f"{out.stderr[-2000:]}")
        for n in procs.nodes:
            wait_until(lambda n=n: _cluster_ok(n.port), deadline_s,
                       f"redis cluster node {n.port} (cluster_state:ok)", n.alive)
    except BaseException:
        procs.stop()
        raise
    return procs
