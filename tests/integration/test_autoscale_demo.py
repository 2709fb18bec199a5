"""The autoscaler with real workers: a rush-hour burst, replicas up within the partition bound,
down to the minimum after the window, and `pipeline reconcile` balanced across every scale event
with no frame processed twice."""

from __future__ import annotations

import re
import subprocess

from pipeline.runtime.settings import REPO_ROOT, Settings


def test_autoscale_demo_follows_a_burst_and_reconciles(services: Settings) -> None:
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "autoscale-demo")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    summary = re.search(r"scale-ups (\d+), scale-downs (\d+), peak replicas (\d+) "
                        r"\(ceiling min\(max (\d+), partitions (\d+)\) = (\d+)\), final (\d+)", out)
    assert summary, out[-4000:]
    ups, downs, peak, _max, partitions, ceiling, final = map(int, summary.groups())
    assert ups >= 1 and downs >= 1
    assert 1 < peak <= ceiling <= partitions
    assert final == 1
    assert "balanced: nothing lost" in out
    # scaling moved partitions without processing any frame twice: no reading counted twice
    totals = dict(re.findall(r"(\w+)=(\d+)", re.search(r"totals: (.*)", out).group(1)))  # type: ignore[union-attr]
    assert totals["overlaps"] == "0" and totals["frames_reprocessed"] == "0", totals
    assert totals["frames_in"] == totals["frames_committed"], totals
