"""Soak: serving and the router hold their throughput for minutes at 80% of their measured
maximum, without growing memory.

    python bench/soak.py [--minutes 10] [--load 0.8] [--concurrency 8] [--targets serving,router]

Set-up (all on 127.0.0.1, as bench/serving.py): a redis-server with a `fiited:budget=0.25`
DLRM trained on MovieLens-100k and published; a tansu broker (the router's exposure log); one
serving process (`chunkrec serve`'s app); one router process (`chunkrec route`, SQLite
metadata) with a running two-arm experiment over that model.

Per target (serving `POST /v1/score`, router `POST /v1/rank`, 100 candidates a request):
1. the maximum: wrk closed loop, `concurrency` connections, 15 s after a warm-up;
2. the soak: wrk paced by a Lua `delay()` so that the connections together offer `load` x
   that maximum, run as `minutes` one-minute segments back to back. Per minute: requests/s
   achieved, p50/p99, non-2xx responses and socket errors, and the RSS of the serving and
   router processes (psutil), so a leak shows as a trend, not only as a before/after pair.

Needs `wrk` (Debian package wrk) and MovieLens-100k cached (`chunkrec data fetch
movielens-100k`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serving import MODEL, POLICY, publish_model, request_bodies, start_server  # noqa: E402

from services import wire  # noqa: E402
from services.stack.infra import (  # noqa: E402
    ManagedProcess,
    create_topics,
    free_port,
    start_http_process,
    start_redis,
    start_tansu,
)
from storage.settings import get_settings  # noqa: E402

API_KEY = "soak-bench-key"

_LUA = """
local bodies = {}
local f = io.open("%(path)s", "rb")
for line in f:lines() do bodies[#bodies + 1] = line end
f:close()
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%(route)s", {["Content-Type"] = "application/json"}, bodies[i])
end
%(delay)s
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def wrk(url: str, route: str, bodies: list[bytes], connections: int, seconds: float,
        work: Path, delay_ms: float | None = None) -> dict[str, float | str]:
    """One wrk run; with `delay_ms` each connection waits that long before each request."""
    data = work / f"{route.strip('/').replace('/', '_')}.jsonl"
    data.write_bytes(b"\n".join(bodies) + b"\n")
    delay = "" if delay_ms is None else f"delay = function() return {delay_ms:.3f} end"
    script = work / "soak.lua"
    script.write_text(_LUA % {"path": data, "route": route, "delay": delay})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
           url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)$", out, re.M)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": _ms(lat["50"]), "p99": _ms(lat["99"]),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sock.group(1) if sock else ""}


def rss_mib(proc: ManagedProcess) -> float:
    """Resident memory of the process and its children, MiB."""
    p = psutil.Process(proc.proc.pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def start_router(port: int, env: dict[str, str], log: Path) -> ManagedProcess:
    chunkrec = [sys.executable, "-m", "services.cli"]
    subprocess.run([*chunkrec, "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True)
    return start_http_process("router", [*chunkrec, "route", "--port", str(port)], port, log,
                              ready_path="/docs", env=env, cwd=ROOT)


def start_experiment(router_url: str) -> int:
    headers = {"X-API-Key": API_KEY}
    body = {"name": "soak", "arms": [
        {"name": "control", "model": MODEL, "weight": 1, "control": True},
        {"name": "treatment", "model": MODEL, "weight": 1}]}
    exp = httpx.post(f"{router_url}/v1/experiments", json=body, headers=headers, timeout=10)
    exp.raise_for_status()
    eid = int(exp.json()["id"])
    httpx.post(f"{router_url}/v1/experiments/{eid}/start", headers=headers,
               timeout=10).raise_for_status()
    return eid


def rank_bodies(score_bodies: list[bytes], max_candidates: int) -> list[bytes]:
    """The serving bodies as /v1/rank requests: user fields as context, the rest per item;
    at most `max_candidates` each (the router's CHUNKREC_ROUTER_MAX_CANDIDATES, 422 beyond)."""
    out = []
    for k, raw in enumerate(score_bodies):
        items = orjson.loads(raw)["items"]
        assert len(items) <= max_candidates, f"{len(items)} candidates, at most {max_candidates}"
        first = items[0]["features"]
        user_keys = ("user", "gender", "age", "occupation", "zip")
        context = {f: first[f] for f in user_keys}
        cands = [{"item": it["features"]["item"],
                  "features": {f: v for f, v in it["features"].items() if f not in user_keys}}
                 for it in items]
        out.append(orjson.dumps({"unit_id": f"u{k}", "candidates": cands, "context": context}))
    return out


def soak(label: str, url: str, route: str, bodies: list[bytes], args: argparse.Namespace,
         work: Path, procs: dict[str, ManagedProcess]) -> list[dict[str, object]]:
    wrk(url, route, bodies, args.concurrency, 3, work)  # warm-up
    peak = wrk(url, route, bodies, args.concurrency, 15, work)
    target = args.load * float(peak["rps"])
    # Paced connections: each sends every concurrency/target s; the wait before a request is
    # that period less the response time (calibrated on a short paced run).
    period_ms = args.concurrency / target * 1e3
    probe = wrk(url, route, bodies, args.concurrency, 10, work, delay_ms=period_ms)
    latency_ms = max(0.0, args.concurrency / float(probe["rps"]) * 1e3 - period_ms)
    delay_ms = max(0.0, period_ms - latency_ms)
    rows: list[dict[str, object]] = [{"minute": "max", **peak, **_rss(procs)}]
    print(f"{label}: max {peak['rps']:,.0f} req/s; soak at {target:,.0f} req/s "
          f"({args.load:.0%}), per-connection delay {delay_ms:.2f} ms", flush=True)
    rows.append({"minute": 0, **_rss(procs)})
    for minute in range(1, args.minutes + 1):
        r = wrk(url, route, bodies, args.concurrency, args.segment_s, work, delay_ms=delay_ms)
        rows.append({"minute": minute, **r, **_rss(procs)})
        print(f"  minute {minute}: {r['rps']:,.0f} req/s p99 {r['p99']:.1f} ms "
              f"non-2xx {r['non2xx']} rss " + " ".join(
                  f"{k} {v:.0f} MiB" for k, v in _rss(procs).items()), flush=True)
    for row in rows:
        row["target_rps"] = target
    return rows


def _rss(procs: dict[str, ManagedProcess]) -> dict[str, float]:
    return {name: rss_mib(p) for name, p in procs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=10, help="soak length per target")
    ap.add_argument("--segment-s", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured maximum")
    ap.add_argument("--concurrency", type=int, default=8, help="wrk connections")
    ap.add_argument("--targets", default="serving,router")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not on PATH (Debian: apt-get install wrk)")
    settings = get_settings()
    if not (Path(settings.data_dir) / "movielens-100k" / "users.parquet").is_file():
        sys.exit("MovieLens-100k is not cached: run `chunkrec data fetch movielens-100k`")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results: dict[str, list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="chunkrec-bench-soak-") as tmp:
        work = Path(tmp)
        with start_redis(log_dir=work) as store, start_tansu(log_dir=work) as broker:
            create_topics(broker.address, {wire.EXPOSURES_TOPIC: 1})
            seeded = publish_model(store.url, settings)
            bodies = request_bodies(settings, 100)
            sport = free_port()
            with start_server(sport, store.url, work / "serve.log") as serving:
                surl = f"http://127.0.0.1:{sport}"
                procs = {"serving": serving}
                if "serving" in targets:
                    results["serving"] = soak("serving /v1/score", surl, "/v1/score", bodies,
                                              args, work, procs)
                if "router" in targets:
                    env = {**os.environ, "CHUNKREC_REDIS_URL": store.url,
                           "CHUNKREC_KAFKA_BOOTSTRAP": broker.address,
                           "CHUNKREC_SERVING_URL": surl, "CHUNKREC_ROUTER_API_KEY": API_KEY,
                           "CHUNKREC_DATABASE_URL": f"sqlite:///{work / 'meta.db'}",
                           # wrk replays 20 unit ids at full speed: the per-unit limit (1,200
                           # a minute by default) would turn the soak into a 429 count
                           "CHUNKREC_ROUTER_UNIT_REQUESTS_PER_MINUTE": "1e12"}
                    rport = free_port()
                    with start_router(rport, env, work / "router.log") as router:
                        rurl = f"http://127.0.0.1:{rport}"
                        start_experiment(rurl)
                        ranks = rank_bodies(bodies, settings.router.max_candidates)
                        results["router"] = soak("router /v1/rank", rurl, "/v1/rank", ranks,
                                                 args, work, {**procs, "router": router})
    print(f"\nsoak bench: {args.minutes} x {args.segment_s:g} s at {args.load:.0%} of the "
          f"measured maximum, {args.concurrency} wrk connections, 100 candidates/request, "
          f"model {POLICY} ({seeded['records']:,} records), {os.cpu_count()} CPUs")
    print(f"{'target':<8} {'minute':>6} {'req/s':>8} {'of target':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'non-2xx':>8} {'sock err':>9} {'serving MiB':>12} {'router MiB':>11}")
    for name, rows in results.items():
        for r in rows:
            rps = r.get("rps")
            print(f"{name:<8} {r['minute']!s:>6} "
                  + (f"{rps:>8,.0f} "
                     + (f"{rps / r['target_rps']:>9.0%} " if r["minute"] != "max" else " " * 10)
                     + f"{r['p50']:>7.1f} "
                     f"{r['p99']:>7.1f} {r['non2xx']:>8} {r['socket_errors'] or 0!s:>9} "
                     if rps is not None else f"{'':>8} {'':>9} {'':>7} {'':>7} {'':>8} {'':>9} ")
                  + f"{r['serving']:>12.1f} {r.get('router', float('nan')):>11.1f}")
        soaked = [r for r in rows if isinstance(r["minute"], int) and r["minute"] > 0]
        first, last = soaked[0], soaked[-1]
        start = rows[1]
        held = min(r["rps"] for r in soaked) / first["rps"]  # type: ignore[operator]
        errors = sum(int(r["non2xx"]) for r in soaked)  # type: ignore[arg-type]
        growth = {k: last[k] - start[k] for k in ("serving", "router") if k in start}
        print(f"{name}: slowest minute {held:.0%} of the first; {errors} non-2xx; RSS "
              + ", ".join(f"{k} {start[k]:.1f} -> {last[k]:.1f} MiB ({v:+.1f})"
                          for k, v in growth.items()))


if __name__ == "__main__":
    main()
