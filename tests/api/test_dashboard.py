"""The dashboard in headless Chromium: it loads, draws the current window of a real
table, and its chart changes when a real worker processes new events (over SSE);
the geo table's positions are plotted. Screenshots are kept in the test's tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.api.chromium import Browser
from tests.api.harness import MINUTE, REGIONS, ApiServer, Served, expected_windows, trips

BASE_MS = 1_763_800_000_000 - 1_763_800_000_000 % MINUTE
SNAPSHOT = "window.flowmillDashboard && JSON.stringify(window.flowmillDashboard.snapshot())"


async def snapshot(browser: Browser) -> dict[str, Any]:
    return json.loads(await browser.evaluate(SNAPSHOT))


def shows(start: int, want: dict[tuple[str, int], dict[str, float]]) -> str:
    """JS: the chart shows window `start` with every region's full trip count."""
    counts = {r: want[(r, start)]["trips"] for r in REGIONS}
    return (
        f"(() => {{ const s = window.flowmillDashboard && window.flowmillDashboard.snapshot();"
        f" if (!s || !s.connected || !s.current || s.current.start !== {start}) return false;"
        f" const want = {json.dumps(counts)};"
        f" const top = Object.fromEntries(s.current.top);"
        f" return Object.keys(want).every(k => top[k] === want[k]); }})()"
    )


async def test_dashboard_chart_updates_live(api: ApiServer, served: Served, tmp_path: Path) -> None:
    before_want = expected_windows(served.trips)
    current = max(s for _, s in before_want)
    async with Browser() as browser:
        await browser.goto(f"{api.url}/dashboard?pipeline={served.name}&table=regions&agg=trips")
        await browser.wait_for(shows(current, before_want))
        before = await snapshot(browser)
        shot_before = await browser.screenshot(tmp_path / "dashboard-before.png")
        assert before["table"] == f"{served.name}/regions" and before["kind"] == "window"
        assert len(before["series"]) >= 3  # the selected key's windows over time
        assert await browser.evaluate("document.querySelectorAll('#top-chart rect').length") == 4

        new_start = BASE_MS + 8 * MINUTE
        new = trips(400, seed=51, start_ms=new_start, minutes=1)
        after_want = expected_windows(served.trips + new)
        await served.add_trips(new, ("by-region",))
        await browser.wait_for(shows(new_start, after_want))
        after = await snapshot(browser)
        shot_after = await browser.screenshot(tmp_path / "dashboard-after.png")

        assert after["updates"] > before["updates"]
        assert after["current"] != before["current"]
        assert after["series"][-1][0] == new_start  # the line chart gained the new window
        assert shot_after != shot_before
        bars = await browser.evaluate(
            "[...document.querySelectorAll('#top-chart rect')]"
            ".map(r => [r.dataset.key, Number(r.dataset.value)])"
        )
        assert dict(bars) == {r: after_want[(r, new_start)]["trips"] for r in REGIONS}
        assert browser.exceptions == []


async def test_dashboard_plots_positions(api: ApiServer, served: Served, tmp_path: Path) -> None:
    async with Browser() as browser:
        await browser.goto(f"{api.url}/dashboard?pipeline={served.name}&table=vehicles")
        await browser.wait_for(
            "document.querySelectorAll('#map circle').length === 30 && "
            "window.flowmillDashboard.snapshot().connected"
        )
        points = (await snapshot(browser))["points"]
        await browser.screenshot(tmp_path / "dashboard-map.png")
        assert len(points) == 30
        assert all(40.7 <= p["lat"] <= 40.8 and -74.02 <= p["lon"] <= -73.92 for _, p in points)
        assert browser.exceptions == []
