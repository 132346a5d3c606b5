"""The live /dashboard page in a real headless Chromium (tests/serve/browser.py): while
streaming requests run it shows them running and waiting and the KV map changes; once they are
done its counters equal /metrics. A screenshot is saved as a test artefact."""

from __future__ import annotations

import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.browser import browser, save_screenshot, wait_until  # noqa: F401 (fixture)
from tests.serve.conftest import API_KEY, auth

pytestmark = pytest.mark.timeout(600)

# Counter tiles and the /metrics series they show.
TILES = {
    "c-requests": "corral:request_success",
    "c-prompt-tokens": "corral:prompt_tokens",
    "c-generation-tokens": "corral:generation_tokens",
    "c-preemptions": "corral:num_preemptions",
    "c-rejected": "corral:request_rejected",
}
NUM_REQUESTS = 6
MAX_TOKENS = 160


@pytest.fixture(scope="module")
def dashboard_server(start_server):
    # Two seats and a small pool: requests wait, and the pool fills and empties.
    return start_server(
        "--api-key", API_KEY, "--max-num-seqs", "2", "--num-kv-blocks", "48",
        "--dashboard-interval-ms", "100",
    )  # fmt: skip


def _metric_totals(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", headers=auth(), timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                name = sample.name.removesuffix("_total")
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def _stream(base_url: str, index: int, errors: list[str]) -> None:
    body = {
        "prompt": f"request {index} " * (4 + 3 * index),
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    try:
        with httpx.stream(
            "POST", base_url + "/v1/completions", json=body, headers=auth(), timeout=300
        ) as response:
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.read()!r}")
            for _ in response.iter_lines():
                pass
    except httpx.HTTPError as error:
        errors.append(repr(error))


def _rows(driver, table: str) -> list[tuple[str, str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".map(tr => [tr.dataset.requestId, tr.dataset.state]);",
        "#" + table,
    )


def test_the_page_follows_requests_and_ends_equal_to_metrics(browser, dashboard_server):  # noqa: F811
    base_url = dashboard_server.base_url
    # The page opens without a key and asks for one: the data needs it.
    browser.get(base_url + "/dashboard")
    wait_until(browser, lambda d: d.find_element("id", "key-form").is_displayed())
    browser.find_element("id", "api-key").send_keys(API_KEY)
    browser.find_element("css selector", "#key-form button").click()
    wait_until(browser, lambda d: d.execute_script("return window.corralDashboard.frames") > 0)
    idle_cells = browser.execute_script("return document.getElementById('kv-map').dataset.cells")
    assert set(idle_cells.split(",")) == {"0"}  # a fresh pool: every block free

    errors: list[str] = []
    threads = [
        threading.Thread(target=_stream, args=(base_url, i, errors)) for i in range(NUM_REQUESTS)
    ]
    for thread in threads:
        thread.start()
    seen_running, seen_waiting, seen_cells = set(), set(), set()

    def busy(driver) -> bool:
        running = _rows(driver, "running-table")
        waiting = _rows(driver, "waiting-table")
        seen_running.update(state for _, state in running)
        seen_waiting.update(state for _, state in waiting)
        seen_cells.add(
            driver.execute_script("return document.getElementById('kv-map').dataset.cells")
        )
        return len(running) == 2 and len(waiting) >= 1

    wait_until(browser, busy, timeout_s=120)
    assert seen_running <= {"prefill", "decode"} and seen_waiting <= {"waiting", "preempted"}
    assert any(cells != idle_cells for cells in seen_cells), "the KV map never changed"
    save_screenshot(browser, "dashboard-busy")
    for thread in threads:
        thread.join(300)
    assert not errors, errors

    totals = _metric_totals(base_url)
    assert totals["corral:request_success"] == NUM_REQUESTS
    assert totals["corral:generation_tokens"] == NUM_REQUESTS * MAX_TOKENS

    def counters_match(driver) -> bool:
        shown = {tile: driver.find_element("id", tile).text for tile in TILES}
        return all(shown[tile] == str(round(totals.get(name, 0.0))) for tile, name in TILES.items())

    wait_until(browser, counters_match)
    assert _rows(browser, "running-table") == [] and _rows(browser, "waiting-table") == []
    steps = browser.execute_script("return window.corralDashboard.lastFrame.steps")
    assert isinstance(steps, list)
    save_screenshot(browser, "dashboard-done")
    page_errors = [
        entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
    ]
    assert page_errors == [] or all("401" in message for message in page_errors), page_errors


def test_data_needs_the_key_and_the_page_does_not(dashboard_server):
    base_url = dashboard_server.base_url
    assert httpx.get(base_url + "/dashboard", timeout=10).status_code == 200
    assert httpx.get(base_url + "/dashboard/static/dashboard.js", timeout=10).status_code == 200
    assert httpx.get(base_url + "/dashboard/static/vendor/uPlot.iife.min.js").status_code == 200
    for name in ("nope.js", "%2e%2e/app.py", "%2e%2e%2f%2e%2e%2fapp.py"):
        response = httpx.get(base_url + "/dashboard/static/" + name, timeout=10)
        assert response.status_code == 404, name
    assert httpx.get(base_url + "/dashboard/state", timeout=10).status_code == 401
    assert httpx.get(base_url + "/dashboard/events", timeout=10).status_code == 401
    state = httpx.get(base_url + "/dashboard/state", headers=auth(), timeout=10).json()
    assert state["kv"]["num_blocks"] == 48 and state["requests"]["policy"] == "FCFSPolicy"
    totals = _metric_totals(base_url)
    assert state["counters"]["corral:request_success"] == totals.get("corral:request_success", 0)


@pytest.fixture(scope="module")
def side_servers(start_server):
    """The servers of the last two tests, started together (their start-ups overlap): one
    streaming dashboard events every 100 ms (its test stops it), one with the dashboard off."""
    return {
        name: start_server("--dashboard-interval-ms", interval, wait=False)
        for name, interval in (("events", "100"), ("off", "0"))
    }


def test_an_open_event_stream_does_not_hold_up_shutdown(side_servers):
    server = side_servers["events"]
    server.wait_ready()
    received = threading.Event()

    def listen() -> None:
        try:
            with httpx.stream("GET", server.base_url + "/dashboard/events", timeout=60) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        received.set()
        except httpx.HTTPError:
            pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert received.wait(60), server.log()
    server.stop()
    # Drained and exited by itself (SIGTERM), not killed after the drain timeout.
    assert server.process.returncode == 0, server.log()
    listener.join(30)
    assert not listener.is_alive()


def test_the_dashboard_can_be_turned_off(side_servers):
    server = side_servers["off"]
    server.wait_ready()
    assert httpx.get(server.base_url + "/dashboard", timeout=10).status_code == 404
    assert httpx.get(server.base_url + "/dashboard/state", timeout=10).status_code == 404
