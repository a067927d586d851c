"""The dashboard in headless Chromium: the page served by the router loads, every chart is
drawn with data (DOM checks on the plotted series, including their laid-out size, which only
a rendering browser gives), and a screenshot is saved next to the test's artefacts."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from sqlalchemy import insert

from services.experiments.router.app import create_app
from services.stack.infra import free_port
from storage.db import experiments as store
from storage.db.models import Exposure, Model, ModelVersionRow, Outcome
from storage.settings import Settings

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (.ci/run "
                                "installs it: apt-get install -y chromium chromium-driver)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,1500"]


class NullSink:
    def send(self, topic: str, key: bytes, value: bytes) -> None:
        pass


def fill(factory) -> int:
    rng = np.random.default_rng(0)
    with factory.begin() as s:
        exp = store.create_experiment(s, "dash", [store.ArmSpec("fixed64", "fixed64", 1, True),
                                                  store.ArmSpec("fiited", "fiited", 1)])
        store.start_experiment(s, exp.id)
        ex, oc = [], []
        for arm, ctr in ((exp.arms[0], 0.10), (exp.arms[1], 0.13)):
            for u in range(300):
                rid = f"{arm.name}-{u}"
                ts = 1000.0 + u * 2
                clicks = 0
                for k in range(3):
                    y = bool(rng.random() < ctr)
                    clicks += y
                    oc.append(dict(request_id=rid, item=str(k), position=k,
                                   score=float(np.clip(0.1 + 0.2 * y + rng.normal(0, 0.1),
                                                       0.01, 0.99)),
                                   clicked=y, late_feedback=0, ts=ts))
                ex.append(dict(request_id=rid, experiment_id=exp.id, phase=1, arm_id=arm.id,
                               unit_id=str(u), model_version=1, ts=ts, latency_ms=3.0,
                               n_shown=3, clicks=clicks))
        s.execute(insert(Exposure), ex)
        s.execute(insert(Outcome), oc)
        for name, k in (("fixed64", 1), ("fiited", 5)):
            m = Model(name=name, policy=name)
            s.add(m)
            s.flush()
            for v in range(1, 8):
                hist = {str(j): int(rng.integers(10, 500)) for j in range(k + 1)} if k > 1 else {}
                s.add(ModelVersionRow(model_id=m.id, version=v, published_at=2000.0 + 5 * v,
                                      embedding_bytes=(400_000 if k > 1 else 1_600_000) + 1000 * v,
                                      chunk_histogram=hist))
        return exp.id


@pytest.fixture
def router_url(db_factory, migrated_db: str) -> Iterator[tuple[str, int]]:
    eid = fill(db_factory)
    settings = Settings(database_url=migrated_db, router_api_key="k")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, sink=NullSink()),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "router did not start"
        time.sleep(0.05)
    try:
        yield url, eid
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dashboard_renders_in_chromium(router_url, tmp_path: Path) -> None:
    url, eid = router_url
    page = f"{url}/experiments/{eid}"
    dom = subprocess.run([CHROMIUM, *FLAGS, "--virtual-time-budget=3000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=60).stdout
    assert 'data-charts-ready="1"' in dom, dom[:2000]
    for chart in ("ctr-chart", "auc-chart", "bytes-chart", "chunks-chart"):
        assert f'id="{chart}"' in dom
    series = re.findall(r'<(?:path|g) class="series" data-series="([^"]+)" '
                        r'data-points="(\d+)"[^>]*data-rendered-width="([\d.]+)"', dom)
    by_chart = [series[i:i + 2] for i in range(0, 6, 2)]  # ctr, auc, bytes: both arms
    for pair in by_chart:
        assert {name for name, *_ in pair} == {"fixed64", "fiited"}
        assert all(int(n) >= 5 and float(w) > 100 for _, n, w in pair), pair
    assert series[6][0] == "fiited" and int(series[6][1]) == 6  # histogram: 0..5 live chunks
    assert float(series[6][2]) > 100
    assert dom.count('class="band"') == 2  # CI bands around both CTR lines
    assert dom.count('class="bar"') == 6
    assert "SRM chi2" in dom

    shot = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={shot}", page], capture_output=True,
                   timeout=60, check=True)
    assert shot.stat().st_size > 20_000
    (tmp_path / "dashboard.png").write_bytes(shot.read_bytes())
