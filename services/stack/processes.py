"""The one-command local stack (`chunkrec up` / `chunkrec down`), without Docker.

    stack = Stack(settings, StackConfig(data="movielens-100k"))
    with stack:                      # stop() on the way out, whatever happened
        stack.start()                # broker, Redis, trainers, serving, replay
        result = stack.wait(monitor) # until the replay is done and both trainers applied it

What it starts, in order, each on a free port on 127.0.0.1 and each a process of its own
(its own session, so a Ctrl-C in the terminal reaches only `up`, which stops them in turn):

1. a tansu broker and a redis-server (services/stack/infra.py), the topics `events`
   (`CHUNKREC_KAFKA_EVENTS_PARTITIONS` partitions, default 2) and `events.dlq`;
2. one `chunkrec train` per model (default `fiited` = fiited:budget=0.25 and `fixed64` =
   fixed:64, same network), each its own consumer group over the whole `events` topic;
3. `chunkrec serve`, polled on /healthz;
4. `chunkrec replay` of the data set (paced at `rate` events/s).

Everything it started is written to a state file (`{data_dir}/stack/stack.json`: the `up`
process and each child, with its pid and the kernel's start time of that pid), so `chunkrec
down` from another shell can ask `up` to stop (SIGTERM), and, if `up` itself is gone, stop
the recorded children, each only if the pid still names the process that was started (start
time checked: a recycled pid is left alone). Nothing else is ever signalled (state.py).

Done: the replay exited (its last line says how many events it sent) and the newest version
record of every model in Redis says it applied that many; or the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import orjson
import redis

from services import wire
from services.messaging.redis_clients import open_sync
from services.stack.infra import (
    ManagedProcess,
    create_topics,
    free_port,
    http_ok,
    poll,
    start_redis,
    start_seaweedfs,
    start_tansu,
    wait_until,
)
from services.stack.redis_cluster import RedisClusterProcs, start_redis_cluster
from services.stack.state import alive, start_time, state_path
from storage.settings import Settings

DEFAULT_MODELS = (("fiited", "fiited:budget=0.25"), ("fixed64", "fixed:64"))
# children that exit when their work is done (the others must keep running)
FINITE = ("replay", "users")
_SENT = re.compile(r"sent ([\d,]+) events")


class StackError(RuntimeError):
    pass


@dataclass
class StackConfig:
    data: str = "movielens-100k"
    events: int | None = None  # replay at most this many
    unit_share: float | None = None  # replay only each unit's first share (replay.unit_head)
    rate: float | None = 5000.0  # replay events/s (None: as fast as the broker takes them)
    minutes: float = 9.0  # give up (and stop everything) after this long
    models: tuple[tuple[str, str], ...] = DEFAULT_MODELS  # (name, policy spec)
    arch: str = "dlrm"
    serving_port: int | None = None  # default: a free port
    publish_interval_s: float = 1.0  # unless CHUNKREC_PUBLISH_INTERVAL_S is set
    durable: bool = False  # the broker keeps its log in SeaweedFS (tansu's s3:// engine)
    redis_cluster: int = 0  # a Redis Cluster of this many masters instead of one redis-server
    workers: int = 1  # ranks of each trainer (a sharded model over torch.distributed)


@dataclass
class Sample:
    """One model's version record as seen at time t (seconds since the stack started)."""

    t: float
    model: str
    version: int
    events_applied: int
    auc: float | None
    window_auc: float | None
    logloss: float | None
    embedding_bytes: int
    redis_bytes: int
    redis_records: int
    lag: int | None


@dataclass
class StackResult:
    done: bool  # every event replayed and applied by every model
    reason: str
    events_sent: int | None
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    latest: dict[str, wire.ModelVersion] = field(default_factory=dict)


class Stack:
    """See module docstring."""

    def __init__(self, settings: Settings, config: StackConfig) -> None:
        self.s = settings
        self.c = config
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = Path(settings.data_dir) / "stack" / "runs" / stamp
        self.log_dir = self.run_dir / "logs"
        self.state_file = state_path(settings)
        self.procs: dict[str, ManagedProcess] = {}
        self.redis: ManagedProcess | None = None
        self.redis_cluster: RedisClusterProcs | None = None  # with config.redis_cluster
        self.broker: ManagedProcess | None = None
        self.s3_store: ManagedProcess | None = None  # SeaweedFS, with --durable
        self.serving_url = ""
        self.t0 = time.monotonic()
        self._child_settings: Settings | None = None

    # ---------------------------------------------------------------- state file
    def _claim(self) -> None:
        """Refuse to start beside a running stack; take the state file."""
        if self.state_file.is_file():
            state = orjson.loads(self.state_file.read_bytes())
            owner = state.get("owner", {})
            if alive(int(owner.get("pid", 0)), owner.get("start")):
                raise StackError(f"a stack is already running (pid {owner['pid']}); stop it "
                                 "with `chunkrec down`")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_state()

    def _write_state(self) -> None:
        # a child that has exited (the replay, before the users start) has no start time
        # and nothing left to stop: it is left out rather than recorded as (pid, None)
        starts = {name: (mp.proc.pid, start_time(mp.proc.pid)) for name, mp in self._all()}
        procfs = Path("/proc").is_dir()
        procs = {name: {"pid": pid, "start": start} for name, (pid, start) in starts.items()
                 if start is not None or not procfs}
        doc = {"owner": {"pid": os.getpid(), "start": start_time(os.getpid())},
               "run_dir": str(self.run_dir), "serving_url": self.serving_url, "procs": procs}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        tmp.replace(self.state_file)

    def _all(self) -> list[tuple[str, ManagedProcess]]:
        infra = [(n, p) for n, p in (("seaweedfs", self.s3_store), ("tansu", self.broker),
                                     ("redis", self.redis)) if p]
        if self.redis_cluster is not None:
            infra += [(f"redis-{i}", p) for i, p in enumerate(self.redis_cluster.nodes)]
        return infra + list(self.procs.items())

    # ---------------------------------------------------------------- starting
    def configure_children(self, **updates: object) -> None:
        """Settings for the children started from now on (after start(): the experiment's
        database, router and joiner settings)."""
        assert self._child_settings is not None, "start() first"
        self._child_settings = self._child_settings.replace(**updates)

    def spawn(self, name: str, args: list[str], port: int = 0,
              env: dict[str, str] | None = None) -> ManagedProcess:
        """Start `chunkrec ARGS` as child `name` (log in log_dir/NAME.log); `env` is added to
        the child's environment only (a secret for one child)."""
        return self._spawn(name, args, port, env)

    def _spawn(self, name: str, args: list[str], port: int = 0,
               extra_env: dict[str, str] | None = None) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by ManagedProcess.stop
        assert self._child_settings is not None
        # the child's environment: this one passed through, plus the stack's settings
        env = dict(os.environ) | self._child_settings.to_env() | (extra_env or {})
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        mp = ManagedProcess(name, proc, "127.0.0.1", port, log_path, log)
        self.procs[name] = mp
        self._write_state()
        return mp

    def train_args(self, name: str, policy: str) -> list[str]:
        """The `chunkrec train` command line of one model's trainer."""
        args = ["train", "--model", name, "--policy", policy, "--data", self.c.data,
                "--arch", self.c.arch]
        return args + (["--workers", str(self.c.workers)] if self.c.workers > 1 else [])

    def start(self, on_step: Callable[[str], None] | None = None) -> None:
        """Start everything (see module docstring); raises StackError / InfraError."""
        step = on_step or (lambda _msg: None)
        self._claim()
        s3 = None
        if self.c.durable:
            step("starting SeaweedFS (S3) for the durable broker")
            self.s3_store, s3 = start_seaweedfs(self.run_dir / "s3", log_dir=self.log_dir)
            self._write_state()
        step("starting the broker (tansu) and redis-server")
        self.broker = start_tansu(log_dir=self.log_dir, s3=s3)
        self._write_state()
        if self.c.redis_cluster:
            step(f"starting a Redis Cluster of {self.c.redis_cluster} masters")
            self.redis_cluster = start_redis_cluster(self.c.redis_cluster, log_dir=self.log_dir,
                                                     data_dir=self.run_dir / "redis-cluster")
            redis_url = self.redis_cluster.url
        else:
            self.redis = start_redis(log_dir=self.log_dir)
            redis_url = self.redis.url
        self._write_state()
        # a partition for every rank at least: rank r reads the partitions p mod N = r
        partitions = max(self.s.kafka.events_partitions, self.c.workers)
        create_topics(self.broker.address, {wire.EVENTS_TOPIC: partitions, wire.DLQ_TOPIC: 1})
        port = self.c.serving_port or free_port()
        self.serving_url = f"http://127.0.0.1:{port}"
        updates: dict[str, object] = {
            # the stack's own redis-server has no password: a configured one would fail AUTH
            "kafka_bootstrap": self.broker.address, "redis_url": redis_url,
            "redis_password": "", "redis_cluster": bool(self.c.redis_cluster),
            "checkpoint_dir": self.run_dir / "checkpoints", "serving_port": port,
            "serving_host": "127.0.0.1", "trainer_threads": self.s.trainer.threads or 1,
        }
        if not self.s.is_set("publish_interval_s"):
            updates["publish_interval_s"] = self.c.publish_interval_s
        self._child_settings = self.s.replace(**updates)
        for name, policy in self.c.models:
            step(f"starting trainer {name} ({policy})"
                 + (f" over {self.c.workers} ranks" if self.c.workers > 1 else ""))
            self._spawn(f"train-{name}", self.train_args(name, policy))
        step(f"starting serving on {self.serving_url}")
        serving = self._spawn("serve", ["serve", "--port", str(port)], port)
        wait_until(lambda: http_ok(self.serving_url + "/healthz"), 60, "serving /healthz",
                   serving.alive)
        step(f"replaying {self.c.data}")
        args = ["replay", "--data", self.c.data, "--quiet", "--rate",
                str(self.c.rate) if self.c.rate else "max"]
        if self.c.events:
            args += ["--limit", str(self.c.events)]
        if self.c.unit_share is not None:
            args += ["--unit-share", f"{self.c.unit_share:g}"]
        self._spawn("replay", args)

    # ---------------------------------------------------------------- watching
    def client(self) -> redis.Redis:
        assert self._child_settings is not None, "start() first"
        return open_sync(self._child_settings.redis, socket_timeout=5)

    def read_versions(self, r: redis.Redis) -> dict[str, wire.ModelVersion]:
        names = [name for name, _ in self.c.models]
        pipe = r.pipeline(transaction=False)  # one GET each: a cluster spreads them
        for n in names:
            pipe.get(wire.version_key(n))
        blobs = pipe.execute()
        return {n: wire.ModelVersion.from_json(b) for n, b in zip(names, blobs, strict=True)
                if b is not None}

    def sample(self, rec: wire.ModelVersion) -> Sample:
        m = rec.metrics
        return Sample(time.monotonic() - self.t0, rec.model, rec.version, rec.events_applied,
                      m.get("auc"), m.get("window_auc"), m.get("logloss"), rec.embedding_bytes,
                      rec.redis_embedding_bytes, rec.redis_embedding_records, m.get("lag"))

    def events_sent(self) -> int | None:
        """Events the replay sent, once it has exited with success (from its last line)."""
        mp = self.procs.get("replay")
        if mp is None or mp.alive():
            return None
        if mp.proc.returncode != 0:
            raise StackError(f"the replay failed (exit {mp.proc.returncode}):\n{mp.log_tail()}")
        found = _SENT.findall(mp.log_tail(5))
        if not found:
            raise StackError(f"the replay's output has no event count:\n{mp.log_tail()}")
        return int(found[-1].replace(",", ""))

    def check_children(self) -> None:
        for name, mp in self.procs.items():
            if name not in FINITE and not mp.alive():
                raise StackError(f"{name} exited (code {mp.proc.returncode}):\n{mp.log_tail()}")

    def wait(self, on_tick: Callable[[StackResult], None] | None = None,
             tick_s: float = 1.0) -> StackResult:
        """Poll the version records every `tick_s` until done or the deadline; `on_tick` gets
        the result so far (samples accumulate)."""
        result = StackResult(False, "", None, 0.0)
        r = self.client()

        def step() -> bool:
            self.check_children()
            result.events_sent = self.events_sent()
            result.latest = self.read_versions(r)
            result.samples += [self.sample(v) for v in result.latest.values()]
            result.seconds = time.monotonic() - self.t0
            if on_tick is not None:
                on_tick(result)
            sent = result.events_sent
            return sent is not None and len(result.latest) == len(self.c.models) and all(
                v.events_applied >= sent for v in result.latest.values())

        try:
            # tick_s: the refresh period of the display, not a synchronisation
            if poll(step, self.deadline, tick_s):
                result.done, result.reason = True, "all events applied"
            else:
                result.reason = f"deadline of {self.c.minutes:g} minutes passed"
            return result
        finally:
            r.close()

    @property
    def deadline(self) -> float:
        """The monotonic time after which `up` gives up: `minutes` after the start."""
        return self.t0 + self.c.minutes * 60

    # ---------------------------------------------------------------- stopping
    def served_versions(self) -> dict[str, int]:
        """Model -> version that serving scores with now (its /readyz), {} if unreachable."""
        try:
            doc = httpx.get(self.serving_url + "/readyz", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {name: m["version"] for name, m in doc.get("models", {}).items()}

    def stop(self) -> None:
        """Stop everything this stack started, newest first; then remove the state file.
        A second Ctrl-C (or SIGTERM) while it stops is ignored: it would orphan children."""
        import threading

        masked = threading.current_thread() is threading.main_thread()
        if masked:
            before = {sig: signal.signal(sig, signal.SIG_IGN)
                      for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stop_all()
        finally:
            if masked:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

    def _stop_all(self) -> None:
        # the replay and the users first (no more events), then every app process at once
        # (trainers checkpoint, publish and leave their groups in parallel), then Redis and
        # the broker
        for name in FINITE:
            if name in self.procs:
                self.procs[name].stop()
        rest = [(name, mp) for name, mp in self.procs.items() if name not in FINITE]
        for _, mp in rest:
            if mp.alive():
                mp.proc.terminate()
        for name, mp in rest:
            mp.stop(grace_s=30.0 if name.startswith("train-") else 10.0)
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
        for mp in (self.redis, self.broker, self.s3_store):
            if mp is not None:
                mp.stop()
        with contextlib.suppress(OSError):
            state = orjson.loads(self.state_file.read_bytes())
            if state.get("owner", {}).get("pid") == os.getpid():
                self.state_file.unlink()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
