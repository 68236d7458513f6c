"""The scheduler's 180-day fleet simulation at fleet size: ``tests/test_scheduler.py::test_fleet_over_180_days``.

The test suite runs the simulation with a few dozen certificates (``CERTD_SIM_CERTS``, default in the test), which
checks every guarantee in seconds. This script runs the same test function, assertions included, with 1,000 or
more certificates, times it, and writes what happened to ``bench/results/fleet_sim.md`` (and ``.json``; a PNG of
renewals per day if matplotlib is installed):

    PYTHONPATH=. .venv/bin/python bench/fleet_sim.py --certs 1000

Nothing is mocked beyond the test's own: the real pipeline, the real local CA, SQLite, real files, a fake clock.
A failed assertion is reported and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.test_scheduler as sim  # noqa: E402 - after the path is set
from tests.conftest import config_writer  # noqa: E402


def _run(certs: int, workdir: Path) -> dict[str, Any]:
    """One simulation of ``certs`` certificates in ``workdir``: the test's verdict and what the inventory holds."""
    scans: list[int] = []
    simulate = sim._simulate

    def counting(*args: Any, **kwargs: Any) -> int:
        scans.append(simulate(*args, **kwargs))
        return scans[-1]

    sim._simulate = counting  # type: ignore[assignment]
    os.environ["CERTD_SIM_CERTS"] = str(certs)
    wall, cpu = time.monotonic(), time.process_time()
    error = None
    try:
        sim.test_fleet_over_180_days(config_writer(workdir), workdir)
    except AssertionError:
        error = traceback.format_exc(limit=3)
    finally:
        sim._simulate = simulate  # type: ignore[assignment]
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return {"certs": certs, "passed": error is None, "error": error, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "scans": scans[0] if scans else None, **_inventory(workdir / "certd.db")}


def _inventory(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT certificate, created_at, not_before, not_after, state FROM versions").fetchall()
        failed = conn.execute("SELECT count(*) FROM events WHERE kind = 'renewal.failed'").fetchone()[0]
    finally:
        conn.close()
    start = sim.START.replace(tzinfo=None)
    issued = [(c, datetime.fromisoformat(at), datetime.fromisoformat(nb), datetime.fromisoformat(na))
              for c, at, nb, na, state in rows if state != "failed"]
    per_day = Counter(int((at - start).total_seconds() // 86400) for _, at, _, _ in issued)
    by_lifetime = Counter(f"{round((na - nb).total_seconds() / 86400)}d" for _, _, nb, na in issued)
    times = sorted(at for _, at, _, _ in issued)
    peak, lo = 0, 0
    for hi, at in enumerate(times):
        while times[lo] <= at - timedelta(days=7):
            lo += 1
        peak = max(peak, hi - lo + 1)
    return {"versions": len(issued), "renewals": len(issued) - len({c for c, *_ in issued}),
            "failed_attempts": failed, "by_lifetime": dict(sorted(by_lifetime.items())),
            "peak_7d_window": peak, "per_day": [per_day.get(d, 0) for d in range(180)]}


def _plot(results: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in results:
        ax.plot(range(180), r["per_day"], label=f"{r['certs']} certificates")
    ax.set_xlabel("simulated day")
    ax.set_ylabel("certificates issued")
    ax.set_yscale("symlog")
    ax.set_title("certd scheduler: issuance per day over 180 simulated days")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _report(results: list[dict[str, Any]], command: str, plotted: bool) -> str:
    lines = [
        "# Fleet simulation: 180 days of renewals",
        "",
        "`tests/test_scheduler.py::test_fleet_over_180_days` at fleet size, with every assertion of the test: each",
        "certificate renewed once per cycle (7 d at 1/2, 30 d and 90 d at 2/3 of the lifetime, less jitter), never",
        "expired, never renewed early; jitter spreads the first renewals; an issuer outage backs off 1, 2, 4 ...",
        "minutes and recovers; the rate-limit budget (1.2 certificates per certificate per 7 days) never exceeded.",
        "Real pipeline, local CA, SQLite and files; a fake clock that jumps to the next wake-up (at least 5 minutes).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}; {time.strftime('%Y-%m-%d')}",
        "",
        "| certificates | result | versions issued | renewals | failed attempts | scans | peak 7-day issuance "
        "| wall s | CPU s | ms per version |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        per = 1000 * r["wall_s"] / max(r["versions"], 1)
        lines.append(f"| {r['certs']} | {'pass' if r['passed'] else 'FAIL'} | {r['versions']} | {r['renewals']} "
                     f"| {r['failed_attempts']} | {r['scans']} | {r['peak_7d_window']} | {r['wall_s']} "
                     f"| {r['cpu_s']} | {per:.0f} |")
    lines += ["", "Versions by lifetime: " + "; ".join(
        f"{r['certs']} certificates: " + ", ".join(f"{k} {v}" for k, v in r["by_lifetime"].items())
        for r in results), ""]
    if plotted:
        lines += ["![issuance per day](fleet_sim.png)", ""]
    for r in results:
        if r["error"]:
            lines += [f"{r['certs']} certificates failed:", "", "```", r["error"].rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", default="1000", help="fleet sizes, comma-separated (default 1000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the report goes")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the inventories here (default: temp)")
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # the simulated outage and the budget make renewals fail on purpose
    command = "PYTHONPATH=. .venv/bin/python bench/fleet_sim.py " + shlex.join(sys.argv[1:])
    results = []
    for certs in (int(n) for n in args.certs.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"certd-fleet-{certs}-", dir=args.workdir) as tmp:
            print(f"simulating {certs} certificates over 180 days ...", flush=True)
            results.append(_run(certs, Path(tmp)))
            r = results[-1]
            print(f"  {'pass' if r['passed'] else 'FAIL'}: {r['versions']} versions, {r['wall_s']} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    plotted = _plot(results, args.out / "fleet_sim.png")
    (args.out / "fleet_sim.md").write_text(_report(results, command, plotted))
    (args.out / "fleet_sim.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out / 'fleet_sim.md'}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
