"""`corral router`'s /dashboard over mock replicas: its frames carry each replica's state and
the router's own per-replica counters (equal to /metrics), and the page, in a headless
Chromium, shows the replicas and the routed requests."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from corral.cluster.router_app import RouterConfig, build_router_app
from tests.cluster.test_router_unit import MockReplicas, router, run, sample
from tests.serve.browser import browser, wait_until  # noqa: F401 (fixture)
from tests.serve.conftest import free_port


def test_state_frame_counts_what_metrics_counts():
    replicas = MockReplicas(3)
    replicas.handlers["http://r2"] = None  # down: out of the rotation after its checks fail

    async def scenario():
        async with router(replicas) as client:
            for _ in range(5):
                await client.post("/v1/completions", content=b'{"prompt": "x"}')
            frame = (await client.get("/dashboard/state")).json()
            metrics = (await client.get("/metrics")).text
            page = (await client.get("/dashboard")).text
        return frame, metrics, page

    frame, metrics, page = run(scenario())
    assert frame["kind"] == "router" and frame["policy"] == "round-robin"
    assert "router.js" in page
    rows = {row["index"]: row for row in frame["replicas"]}
    assert [rows[i]["url"] for i in range(3)] == replicas.urls
    assert rows[2]["available"] is False and rows[0]["available"] is True
    for index in range(3):
        counted = sample(metrics, "corral:router_requests_total", replica=str(index)) or 0.0
        # one series per route: the frame sums them
        assert rows[index]["requests"] == counted
    assert rows[0]["requests"] + rows[1]["requests"] >= 5
    assert frame["counters"]["corral:router_requests"] == sum(r["requests"] for r in rows.values())


def test_dashboard_can_be_turned_off():
    replicas = MockReplicas(1)

    async def scenario():
        async with router(replicas, dashboard_interval_ms=0) as client:
            return (await client.get("/dashboard")).status_code

    assert run(scenario()) == 404
    with pytest.raises(ValueError, match="dashboard_interval_ms"):
        RouterConfig(backend_urls=("http://r",), dashboard_interval_ms=10)


@pytest.fixture
def live_router():
    """The router app over two mock replicas, served by uvicorn on loopback in a thread."""
    replicas = MockReplicas(2)
    config = RouterConfig(
        backend_urls=tuple(replicas.urls), policy="round-robin", dashboard_interval_ms=100
    )
    app = build_router_app(config, transport=httpx.MockTransport(replicas))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    app.state.closing = True  # what ClosingServer sets on a signal: the page's stream ends
    thread.join(30)


def test_page_shows_replicas_and_routed_requests(browser, live_router):  # noqa: F811
    browser.get(live_router + "/dashboard")
    wait_until(browser, lambda d: d.execute_script("return window.corralDashboard.frames") > 0)
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#replica-table tbody tr'))"
        ".map(tr => tr.dataset.replica);"
    )
    assert rows == ["#0", "#1"]
    for _ in range(6):
        assert httpx.post(live_router + "/v1/completions", json={"prompt": "x"}).status_code == 200
    wait_until(browser, lambda d: d.find_element("id", "r-requests").text == "6")
    assert browser.find_element("id", "r-available").text == "2 / 2"
