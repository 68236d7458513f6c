"""Many clients streaming huge chunked bodies at a real ``certd run``: the daemon's peak RSS and the time taken.

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python bench/api_body_flood.py --clients 50 --megabytes 300 \
        [--path /v1/certificates/a/renew] [--repo DIR] [--out bench/results]

Every client POSTs ``--megabytes`` of zeros with ``Transfer-Encoding: chunked`` (a generator through
requests, 64 KiB chunks, no credentials), all at once. The daemon's VmRSS is sampled every 10 ms from
/proc/<pid>/status, and VmHWM (the kernel's own peak) is read at the end. ``--repo`` runs another checkout's
certd (e.g. a worktree of an older commit) for a before/after comparison; beware that a certd which buffers
whole bodies needs about twice the body size per client. Results: bench/results/api_body_flood.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers.ports import free_port  # noqa: E402

CHUNK = bytes(64 * 1024)
CONFIG = """
[database]
url = "sqlite:///{tmp}/certd.db"

[daemon]
check_interval = "1h"
workers = 2
api_listen = "127.0.0.1:{port}"
api_token_file = "{tmp}/api.token"

[issuers.local]
type = "local-ca"
dir = "{tmp}/ca"

[certificates.a]
issuer = "local"
names = ["a.example.test"]
output_dir = "{tmp}/out/a"
"""


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _client(url: str, total: int, out: dict[str, Any]) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(total // len(CHUNK)):
            sent += len(CHUNK)
            yield CHUNK

    started = time.monotonic()
    try:
        out["status"] = requests.post(url, data=body(), timeout=600).status_code
    except requests.RequestException as exc:
        out["status"] = type(exc).__name__
    out["seconds"] = time.monotonic() - started
    out["sent"] = sent


def run(clients: int, megabytes: int, path: str, repo: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="certd-flood-") as tmp:
        port = free_port()
        Path(tmp, "api.token").write_text("bench-token\n")
        config = Path(tmp, "certd.toml")
        config.write_text(CONFIG.format(tmp=tmp, port=port))
        with Path(tmp, "daemon.log").open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(config), "run"], cwd=repo, stdout=log,
                                    stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        requests.get(url + "/healthz", timeout=1)
                        break
                    except requests.ConnectionError:
                        time.sleep(0.1)
                time.sleep(1.0)  # let the first scan settle
                baseline = _kb(proc.pid, "VmRSS")
                samples: list[int] = []
                stop = threading.Event()

                def sample() -> None:
                    while not stop.wait(0.01):
                        samples.append(_kb(proc.pid, "VmRSS"))

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                results: list[dict[str, Any]] = [{} for _ in range(clients)]
                threads = [threading.Thread(target=_client, args=(url + path, megabytes * 1024 * 1024, results[i]))
                           for i in range(clients)]
                started = time.monotonic()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                seconds = time.monotonic() - started
                stop.set()
                sampler.join()
                alive = requests.get(url + "/healthz", timeout=5).status_code
                hwm = _kb(proc.pid, "VmHWM")
            finally:
                proc.terminate()
                proc.wait(30)
    sent = [r["sent"] for r in results]
    return {
        "clients": clients,
        "megabytes_each": megabytes,
        "path": path,
        "repo": str(repo),
        "seconds": round(seconds, 3),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "rss_baseline_mb": round(baseline / 1024, 1),
        "rss_peak_sampled_mb": round(max(samples or [0]) / 1024, 1),
        "vmhwm_mb": round(hwm / 1024, 1),
        "client_sent_max_mb": round(max(sent) / 1024 / 1024, 2),
        "client_sent_total_mb": round(sum(sent) / 1024 / 1024, 1),
        "healthz_after": alive,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }


def _markdown(doc: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in doc.items())
    return ("# API body flood\n\n"
            f"{doc['clients']} clients, each streaming {doc['megabytes_each']} MB chunked to `{doc['path']}` "
            "without credentials, all at once, against one `certd run` (SQLite).\n\n"
            "| measure | value |\n| --- | --- |\n" + rows + "\n\n"
            "`client_sent_*`: bytes the clients' generators had handed to the socket when the answer came "
            "(the 64 KiB cap, plus what the kernel's socket buffers took).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--path", default="/v1/certificates/a/renew")
    parser.add_argument("--repo", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    doc = run(args.clients, args.megabytes, args.path, args.repo.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api_body_flood.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "api_body_flood.md").write_text(_markdown(doc))
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
