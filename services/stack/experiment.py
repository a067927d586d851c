"""The A/B experiment `chunkrec up` runs on the stack (services/stack/processes.py): three
arms, driven
by simulated users, ending in the verdict table and the dashboard.

    stack.start()                                 # broker, Redis, 3 trainers, serving, warm-up
    exp = StackExperiment(stack, ExperimentPlan(data="movielens-100k"))
    exp.start()                                   # database, router, joiner, experiment
    stack.wait()                                  # every trainer applied the warm-up
    run = exp.drive(skip_ratings=80_000)          # simulated users, until every exposure joined
    report, dashboard_status = exp.finish()

The arms, all the same network (DLRM, D = 64), only the embedding memory differs:

    fixed64   fixed:64              control
    fiited    fiited:budget=0.25    FIITED at 25% of fixed-64's bytes (everything counted)
    fixed_eq  fixed:8,pad=64        a fixed width at FIITED's memory

`fixed_eq`'s width is the d whose measured bytes on MovieLens-100k are nearest FIITED's:
fixed:8 takes ~22-24% of fixed-64's bytes in this store (values, row-wise Adagrad state, the
per-ID record and the index), fixed:16 ~40%; the verdict table prints every arm's measured
bytes next to its CTR, so the match can be checked on each run.

Fairness: every trainer is its own consumer group over the whole `events` topic, so each arm
learns from every event, the joined events of every arm's traffic included; the split only
decides who is served by which arm.

Warm-up: the replay sends the first half of every user's ratings (time order, UNIT_SHARE:
`replay --unit-share`) to `events` before any user arrives, so the arms rank with trained
models rather than random ones; the simulated users then replay sessions made of each user's
remaining ratings, so no model has seen the labels of the items it ranks (the arms' CTRs
measure prediction, not recall of the training data), and every user has a pre-period, the
CUPED covariate. With `unit_share` None (`chunkrec up --split time` or `--events N`) the
warm-up is the first `skip_ratings` ratings of all users (80% by default) and the users are
those who rated after them (on MovieLens-100k ~300 of 943).

Stopping: the report's tests are always valid, so the users are stopped as soon as every arm
has its verdict (ship or do not ship) with at least `min_units` users an arm
(`stop_when_decided`); every request in flight is joined before the final report.

Items: the router serves item features from a table (`{run_dir}/items.csv`: item, genre;
CHUNKREC_ROUTER_ITEM_TABLE), written from the data set before it starts; the users send item
ids and their own features (the context), and the exposures carry both, the MovieLens schema's
fields, as the trainers read them.

Rate limit: the users replay each MovieLens user's history in seconds, so one unit sends at
once what its user sent over months: a rank and up to top_k (3) clicks per session. On
MovieLens-100k that fits the router's default of 1,200 a minute per unit (the busiest user
has 246 sessions, at most 984 requests, within the bucket's first minute); a MovieLens-1M
user has up to 772 sessions, ~3,000 requests, and would get 429s. The stack's router lifts
the per-unit limit (DEMO_UNIT_REQUESTS_PER_MINUTE) unless
CHUNKREC_ROUTER_UNIT_REQUESTS_PER_MINUTE is set.

Decision: the experiment's rules (DEMO_RULES, PUT /v1/experiments/{id}/rules) ask whether
each arm keeps CTR within `margin` of fixed64's (non-inferiority), with log loss and p99
latency as guardrails; the report ends in ship, do not ship or keep running. CUPED: before the
users arrive, each user's warm-up ratings (their clicks and exposures before the experiment)
go to POST /v1/experiments/{id}/pre-period as the report's covariate.

Every child is started through the stack (its state file, its logs, stopped with it). The
router's admin key is generated per run, given to the router process only (its environment)
and written to `{run_dir}/router_api_key` (mode 0600); it is never printed or logged.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services import wire
from services.stack.infra import create_topics, free_port, http_ok, poll, wait_until
from services.stack.processes import Stack, StackError
from services.stack.replay import unit_head

EXPERIMENT_MODELS = (("fixed64", "fixed:64"), ("fiited", "fiited:budget=0.25"),
                     ("fixed_eq", "fixed:8,pad=64"))
CONTROL = "fixed64"
WARMUP_SHARE = 0.8  # of the ratings, replayed to `events` before the users arrive (time split)
UNIT_SHARE = 0.5  # of each user's ratings, replayed before the users arrive (user split)
DEMO_UNIT_REQUESTS_PER_MINUTE = 1e9  # see module docstring (rate limit)
_USERS_DONE = re.compile(r"([\d,]+) requests, ([\d,]+) shown, ([\d,]+) clicks .*?(\d+) errors")


def demo_rules(margin: float) -> dict[str, Any]:
    """The demo's decision rules: CTR non-inferior within `margin` (relative), served log
    loss within the same margin (at least 5%), p99 latency within 50% (the arms share one
    serving process), error rate at most one percentage point above control's."""
    return {"primary": {"metric": "ctr", "test": "non_inferiority", "margin": margin},
            "guardrails": [{"metric": "log_loss", "margin": max(margin, 0.05)},
                           {"metric": "latency_p99", "margin": 0.5},
                           {"metric": "error_rate", "margin": 0.01}],
            "alpha": 0.05, "power": 0.8}


@dataclass
class ExperimentPlan:
    data: str = "movielens-100k"
    sessions: int | None = None  # simulated-user sessions (one /v1/rank each; None: all)
    users_rate: float | None = None  # sessions/s (None: as fast as the router answers)
    window_s: float = 5.0  # attribution window (simulated users click at once)
    grace_s: float = 2.0
    record_every_s: float = 2.0  # the joiner copies model versions to the database this often
    margin: float = 0.05  # CTR non-inferiority margin of the decision rules (relative)
    # the warm-up: each user's first share of their ratings (None: the first `skip_ratings`
    # ratings of all, in time order); the users' sessions are made of the rest
    unit_share: float | None = None
    concurrency: int = 8  # simulated users in flight at once
    stop_when_decided: bool = True  # stop the users once every arm has its verdict ...
    min_units: int = 100  # ... and at least this many users (the CLT's, not the test's, need)


@dataclass
class UsersRun:
    """What the users process reported, and what the database holds so far."""

    seconds: float
    done: bool = False
    requests: int | None = None
    shown: int | None = None
    clicks: int | None = None
    errors: int | None = None
    joined: int = 0  # exposures in the database (closed by the joiner)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> report row
    reason: str = ""
    stopped: bool = False  # stopped once every arm was decided (plan.stop_when_decided)


class StackExperiment:
    """See module docstring."""

    def __init__(self, stack: Stack, plan: ExperimentPlan) -> None:
        self.stack = stack
        self.plan = plan
        self.api_key = secrets.token_urlsafe(32)
        self.database_url = f"sqlite:///{stack.run_dir / 'chunkrec.db'}"
        self.router_url = ""
        self.experiment_id: int | None = None
        self.key_file = stack.run_dir / "router_api_key"
        self.item_table = stack.run_dir / "items.csv"
        self.http = httpx.Client(timeout=10.0)

    @property
    def dashboard_url(self) -> str:
        return f"{self.router_url}/experiments/{self.experiment_id}"

    def _admin(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = self.http.request(method, self.router_url + path,
                                 headers={"X-API-Key": self.api_key}, **kwargs)
        if resp.status_code >= 300:
            raise StackError(f"router {method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def start(self, step: Callable[[str], None] | None = None) -> None:
        """Topics, database, router, joiner; create and start the experiment."""
        from storage.db.migrate import upgrade

        say = step or (lambda _msg: None)
        stack, s = self.stack, self.stack.s
        assert stack.broker is not None, "start the stack first"
        create_topics(stack.broker.address, {wire.EXPOSURES_TOPIC: 2, wire.FEEDBACK_TOPIC: 2})
        say(f"metadata database: {self.database_url} (migrations applied)")
        upgrade(self.database_url)
        say(f"item table: {self.item_table} (the router's item features)")
        write_item_table(self.plan.data, s.data_dir, self.item_table)
        port = free_port()
        self.router_url = f"http://127.0.0.1:{port}"
        updates: dict[str, object] = {
            "database_url": self.database_url, "router_host": "127.0.0.1",
            "router_port": port, "serving_url": stack.serving_url,
            "router_api_key": "",  # the key goes to the router process alone
            # the router and the users (who then send item ids only)
            "router_item_table": self.item_table,
        }
        for name, value in (("attribution_window_s", self.plan.window_s),
                            ("joiner_grace_s", self.plan.grace_s),
                            ("router_unit_requests_per_minute",
                             DEMO_UNIT_REQUESTS_PER_MINUTE)):
            if not s.is_set(name):
                updates[name] = value
        stack.configure_children(**updates)
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.api_key + "\n")
        say(f"starting the router on {self.router_url} and the joiner")
        router = stack.spawn("router", ["route", "--port", str(port)], port,
                             env={"CHUNKREC_ROUTER_API_KEY": self.api_key})
        stack.spawn("joiner", ["join", "--default-schema", self.plan.data,
                               "--record-every-s", str(self.plan.record_every_s)])
        wait_until(lambda: http_ok(self.router_url + "/healthz"), 60, "router /healthz",
                   router.alive)
        arms = [{"name": name, "model": name, "weight": 1.0, "control": name == CONTROL}
                for name, _ in stack.c.models]
        exp = self._admin("POST", "/v1/experiments", json={
            "name": "fiited-vs-fixed", "arms": arms})
        self.experiment_id = int(exp["id"])
        self._admin("PUT", f"/v1/experiments/{self.experiment_id}/rules",
                    json=demo_rules(self.plan.margin))
        self._admin("POST", f"/v1/experiments/{self.experiment_id}/start")
        say(f"experiment {self.experiment_id} running: arms "
            + ", ".join(f"{a['name']}{' (control)' if a['control'] else ''}" for a in arms))

    def report(self) -> dict[str, Any]:
        resp = self.http.get(f"{self.router_url}/v1/experiments/{self.experiment_id}/report")
        if resp.status_code != 200:
            raise StackError(f"router report: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def _served_everywhere(self, versions: dict[str, int]) -> bool:
        served = self.stack.served_versions()
        return all(served.get(m, -1) >= v for m, v in versions.items())

    def drive(self, skip_ratings: int, on_tick: Callable[[UsersRun], None] | None = None,
              tick_s: float = 1.0) -> UsersRun:
        """Start the simulated users once serving scores with the warmed-up versions; poll
        until they are done and every request they made is joined, or the stack's deadline."""
        stack = self.stack
        r = stack.client()
        try:
            versions = {m: v.version for m, v in stack.read_versions(r).items()}
        finally:
            r.close()
        wait_until(lambda: self._served_everywhere(versions), 30,
                   "serving loads the warmed-up versions")
        self.record_pre_period(skip_ratings)
        args = ["replay", "--mode", "users", "--data", self.plan.data, "--quiet",
                *(["--limit", str(self.plan.sessions)] if self.plan.sessions else []),
                "--rate", f"{self.plan.users_rate:g}" if self.plan.users_rate else "max",
                "--router-url", self.router_url, "--concurrency", str(self.plan.concurrency)]
        if self.plan.unit_share is not None:
            args += ["--unit-share", f"{self.plan.unit_share:g}"]
        else:
            args += ["--skip-ratings", str(skip_ratings)]
        users = stack.spawn("users", args)
        run = UsersRun(0.0)
        # once the users are stopped, every request in flight is joined within its window
        # and grace; the joined count then stays put
        settle_s = self.plan.window_s + self.plan.grace_s + 3.0
        last = [-1, 0.0]  # joined, when it last changed

        def step() -> bool:
            stack.check_children()
            if not users.alive() and run.requests is None and not run.stopped:
                self._read_users(run, users.proc.returncode, users.log_tail(5))
            rep = self.report()
            run.arms = {a["arm"]: a for a in rep["arms"]}
            run.joined = sum(int(a["requests"]) for a in rep["arms"])
            run.seconds = time.monotonic() - stack.t0
            if on_tick is not None:
                on_tick(run)
            recorded = all(a["embedding_bytes"] is not None for a in rep["arms"])
            if (self.plan.stop_when_decided and run.requests is None and not run.stopped
                    and decided(rep, self.plan.min_units)):
                users.stop()  # the always-valid tests may be read at any look: stop here
                run.stopped = True
            if run.stopped:
                if run.joined != last[0]:
                    last[:] = [run.joined, time.monotonic()]
                return time.monotonic() - last[1] >= settle_s and recorded
            if run.requests is None:
                return False
            expected = run.requests - (run.errors or 0)
            return run.joined >= expected and recorded

        # tick_s: the refresh period of the display, not a synchronisation
        if poll(step, stack.deadline, tick_s):
            run.done = True
            run.reason = ("every arm decided: users stopped, every request joined"
                          if run.stopped else "every request joined")
        else:
            run.reason = f"deadline of {stack.c.minutes:g} minutes passed"
        if run.stopped:  # the users' own counts died with them: the database's
            run.requests = run.joined
            run.shown = sum(int(a["exposures"]) for a in run.arms.values())
            run.clicks = sum(int(a["clicks"]) for a in run.arms.values())
        return run

    def record_pre_period(self, warmup: int) -> int:
        """Each user's warm-up ratings (the first `warmup` in time order, what the trainers
        learnt before the experiment): exposures and clicks (rating >= 4), the CUPED
        covariate. Returns the number of users sent."""
        from services.stack.simulated_users import load_movielens

        ratings, _ = load_movielens(self.plan.data, self.stack.s.data_dir)
        r = ratings.sort_values("timestamp", kind="stable")
        if self.plan.unit_share is not None:
            r = r[unit_head(r["user"].to_numpy(), self.plan.unit_share)]
        else:
            r = r.iloc[:warmup]
        per = r.assign(click=(r["rating"] >= 4).astype(int)).groupby("user")["click"].agg(
            ["size", "sum"])
        units = [{"unit_id": str(u), "exposures": int(n), "clicks": int(c)}
                 for u, n, c in per.itertuples()]
        for start in range(0, len(units), 10_000):
            self._admin("POST", f"/v1/experiments/{self.experiment_id}/pre-period",
                        json={"units": units[start:start + 10_000]})
        return len(units)

    @staticmethod
    def _read_users(run: UsersRun, code: int | None, tail: str) -> None:
        found = _USERS_DONE.findall(tail)
        if not found:
            raise StackError(f"the simulated users failed (exit {code}):\n{tail}")
        run.requests, run.shown, run.clicks, run.errors = (int(x.replace(",", ""))
                                                           for x in found[-1])

    def finish(self, stop_experiment: bool = True) -> tuple[dict[str, Any], int]:
        """(the final report, the dashboard's HTTP status); stops the experiment first unless
        the stack is kept for inspection."""
        if stop_experiment:
            self._admin("POST", f"/v1/experiments/{self.experiment_id}/stop")
        rep = self.report()
        status = self.http.get(self.dashboard_url).status_code
        return rep, status

    def close(self) -> None:
        self.http.close()


def decided(report: dict[str, Any], min_units: int) -> bool:
    """Whether every treatment arm has its verdict (ship or do not ship) and every arm at
    least `min_units` units: a clustered variance from a handful of users is no estimate."""
    verdicts = report.get("arm_verdicts") or []
    return (bool(verdicts) and all(v["verdict"] != "keep running" for v in verdicts)
            and all(int(a["units"]) >= min_units for a in report["arms"]))


def write_item_table(data: str, data_dir: Path, path: Path) -> None:
    """The router's item table of a MovieLens data set (simulated_users.item_table) as CSV."""
    from services.stack.simulated_users import item_table, load_movielens

    _, feats = load_movielens(data, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    item_table(feats).to_csv(path, index=False)


def warmup_events(data: str, data_dir: Path, share: float = WARMUP_SHARE) -> int:
    """The first `share` of a MovieLens data set's ratings: the warm-up replay's --limit."""
    from services.stack.simulated_users import load_movielens

    ratings, _ = load_movielens(data, data_dir)
    return max(1, int(share * len(ratings)))


def is_movielens(data: str) -> bool:
    return data.lower().startswith("movielens")
