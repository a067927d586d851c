"""Report time and memory at the scale of real traffic: an experiment with 1M and 10M outcomes
on PostgreSQL (rows made by SQL generate_series), then `experiment_report` on it: per-arm sums
and histograms computed by the database, nothing row by row in Python.

    .venv/bin/python bench/report_scale.py                      # 1M and 10M outcomes
    .venv/bin/python bench/report_scale.py --outcomes 1000000 --admin-url postgresql+psycopg://...
    .venv/bin/python bench/report_scale.py --keep             # keep the databases, reuse them

Per size: the rows (requests x 10 items, units = outcomes / 50, three arms, a pre-period for
every unit), the time to fill them (not the report's), the report's wall time (median of
--repeat reads) and the Python heap (numpy included) the report allocated at its peak
(tracemalloc, in one more read). "rows into pandas" is what the report did before (load
every outcome with its unit, arm, score and label), timed once where it fits
(--pandas-max outcomes).
Each database is created for the run and dropped after it (--keep: kept as
chunkrec_bench_<outcomes> and reused by the next run with --keep; drop it by hand).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import uuid

from sqlalchemy import create_engine, text

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
ITEMS = 10  # per request
OUTCOMES_PER_UNIT = 50


def fill(url: str, outcomes: int) -> tuple[int, float]:
    """An experiment with `outcomes` outcome rows; (experiment id, seconds)."""
    from storage.db import experiments as store
    from storage.db.session import make_engine, session_factory

    t = time.perf_counter()
    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        exp = store.create_experiment(s, "scale", [store.ArmSpec("fixed64", "fixed64", 1, True),
                                                   store.ArmSpec("fiited", "fiited", 1),
                                                   store.ArmSpec("fixed_eq", "fixed_eq", 1)])
        store.start_experiment(s, exp.id)
        arms = [a.id for a in exp.arms]
    requests, units = outcomes // ITEMS, max(3, outcomes // OUTCOMES_PER_UNIT)
    p = {"exp": exp.id, "req": requests, "units": units, "a0": arms[0], "a1": arms[1],
         "a2": arms[2]}
    # item k of request g: score s(g, k), clicked when c(g, k) < 0.6 s: deterministic, so the
    # exposure's sums (written by the joiner in production) match its outcomes
    score = "(((g * 31 + k * 17) % 997) + 0.5) / 997.0"
    click = f"((g * 7 + k * 13) % 1009) / 1009.0 < 0.6 * {score}"
    loss = f"CASE WHEN {click} THEN -LN({score}) ELSE -LN(1 - {score}) END"
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO exposures (request_id, experiment_id, phase, arm_id, unit_id,
                                   model_version, ts, latency_ms, n_shown, clicks, log_loss)
            SELECT 'r' || g, :exp, 1,
                   CASE (g::bigint * 7919 % :units) % 3 WHEN 0 THEN :a0 WHEN 1 THEN :a1
                        ELSE :a2 END,
                   'u' || (g::bigint * 7919 % :units), 1, 1000.0 + g * 0.01, 5 + 10 * random(),
                   10, (SELECT COUNT(*) FROM generate_series(0, 9) k WHERE {click}),
                   (SELECT SUM({loss}) FROM generate_series(0, 9) k)
            FROM generate_series(1, :req) g"""), p)
        conn.execute(text(f"""
            INSERT INTO outcomes (request_id, item, position, score, clicked, late_feedback, ts)
            SELECT 'r' || g, k::text, k, {score}, {click}, 0, 1000.0 + g * 0.01
            FROM generate_series(1, :req) g, generate_series(0, 9) k"""), p)
        conn.execute(text("""
            INSERT INTO unit_pre_period (experiment_id, unit_id, exposures, clicks)
            SELECT :exp, 'u' || u, 20, floor(random() * 13)
            FROM generate_series(0, :units - 1) u"""), p)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return exp.id, time.perf_counter() - t


STEPS = ("phase_span", "pre_period_ctr", "latency_histograms", "look_moments",
         "score_histograms")


def measure(url: str, experiment_id: int, repeat: int) -> tuple[float, float, str,
                                                                  dict[str, float]]:
    """(median seconds, peak Python heap MiB, verdict, median seconds of each database step)
    of experiment_report; the heap from one more read under tracemalloc (which slows Python
    down, so not timed)."""
    from services.experiments import aggregates
    from services.experiments.analysis import experiment_report
    from storage.db.session import make_engine, session_factory

    factory = session_factory(make_engine(url))
    times = []
    steps: dict[str, list[float]] = {name: [] for name in STEPS}
    originals = {name: getattr(aggregates, name) for name in STEPS}

    def timed(name: str):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                steps[name].append(time.perf_counter() - t)
        return call

    for name in STEPS:
        setattr(aggregates, name, timed(name))
    try:
        for _ in range(repeat):
            with factory() as s:
                t = time.perf_counter()
                rep = experiment_report(s, experiment_id)
                times.append(time.perf_counter() - t)
    finally:
        for name, fn in originals.items():
            setattr(aggregates, name, fn)
    tracemalloc.start()
    with factory() as s:
        experiment_report(s, experiment_id)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    times.sort()
    assert rep.verdict is not None
    median = {name: sorted(v)[len(v) // 2] for name, v in steps.items() if v}
    return times[len(times) // 2], peak, rep.verdict.verdict, median


def rows_into_pandas(url: str, experiment_id: int) -> tuple[float, float]:
    """(seconds, peak heap MiB) of loading every outcome with its unit into pandas."""
    import pandas as pd

    engine = create_engine(url)
    tracemalloc.start()
    t = time.perf_counter()
    with engine.connect() as conn:
        df = pd.read_sql(text(
            "SELECT o.request_id, e.arm_id, e.unit_id, o.score, o.clicked, o.ts FROM outcomes o "
            "JOIN exposures e ON e.request_id = o.request_id WHERE e.experiment_id = :e"),
            conn, params={"e": experiment_id})
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    del df
    engine.dispose()
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outcomes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--admin-url", default=ADMIN_URL)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pandas-max", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep each database "
                    "(chunkrec_bench_<outcomes>) and reuse it when it is there: a 10M fill "
                    "takes minutes")
    args = ap.parse_args()
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    print(f"{'outcomes':>11} {'units':>9} {'fill s':>8} {'report s':>9} {'heap MiB':>9} "
          f"{'verdict':>13} {'rows into pandas':>22}")
    for n in args.outcomes:
        name = f"chunkrec_bench_{n}" if args.keep else f"chunkrec_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            there = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                 {"n": name}).first() is not None
            if not there:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = args.admin_url.rsplit("/", 1)[0] + "/" + name
        try:
            from storage.db.migrate import upgrade

            eid, fill_s = (1, float("nan"))
            if not there:
                upgrade(url)
                eid, fill_s = fill(url, n)
            seconds, heap, verdict, steps = measure(url, eid, args.repeat)
            old = "-"
            if n <= args.pandas_max:
                ps, pm = rows_into_pandas(url, eid)
                old = f"{ps:.1f} s, {pm:.0f} MiB"
            print(f"{n:>11,} {n // OUTCOMES_PER_UNIT:>9,} {fill_s:>8.1f} {seconds:>9.2f} "
                  f"{heap:>9.1f} {verdict:>13} {old:>22}", flush=True)
            print("    database steps (median s): " + ", ".join(
                f"{k} {v:.2f}" for k, v in steps.items()), flush=True)
        finally:
            if not args.keep:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
