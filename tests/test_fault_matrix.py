"""The fault matrix (issue 18): every CA fault at every phase of a renewal, and the load balancer's, for three
durations, in one ``certd run`` against real Pebble and OpenBao, with the invariants checked continuously
(``tests/invariants.py``).

Each cell is one certificate with an issuer of its own (its own account) behind a proxy of its own
(``tests/servers/http_fault_proxy.py``), so the cells run side by side in real time on short-lived
certificates (``VALIDITY`` seconds): ACME cells (5xx, ``rateLimited``, ``badNonce``, ``accountDoesNotExist``,
hang, reset, refused connections at order, challenge, finalize, download; an order stuck ``processing``; a
certificate for another key), Vault cells (5xx, 429, sealed, hang, reset, refused at login and sign), and load
balancer cells on the local CA (the deploy command failing or hanging). A cell's fault starts before its
renewal time and ends:

- ``brief``: a little after the renewal time — renewed long before the hard deadline, never critical;
- ``past-deadline``: inside the hard deadline (the last tenth of the life) — ``critical`` while it lasts, and
  still renewed before expiry: a CA answering again near the end is used at once;
- ``past-expiry``: after ``not_after`` — ``expired`` everywhere while it lasts, renewed soon after it ends.

What every cell must show: the invariants held at every sample (nothing said "all is well" while the served
certificate was expired or critical); the served certificate never expired while the CA could issue; the
failures recorded with their step and cause; orders bounded — one per attempt (two when the account had to
be registered again) before issuance, and after it (the load balancer's faults) one for the whole episode.
The daemon's ``check_interval`` is 30 s, so the retries (seconds apart) must come from its wake-ups, on time.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.cli import certd
from tests.conftest import WriteConfig
from tests.invariants import Checker
from tests.servers import acme_faults
from tests.servers.acme_faults import Phase
from tests.servers.haproxy import HaproxyServer
from tests.servers.http_fault_proxy import HttpFaultProxy, Rule
from tests.servers.openbao import OpenBaoServer
from tests.servers.pebble import PebbleServer
from tests.servers.ports import free_port
from tests.servers.runtime_proxy import LOCKED, RuntimeProxy
from tests.test_daemon import Daemon
from tests.test_issuer_acme import _QuietHandler

VALIDITY = 180  # seconds: due at 90 s, hard deadline at 162 s
RENEW_FRACTION = 0.5
ATTEMPT_TIMEOUT = 3  # seconds: a hung CA holds an attempt this long
VAULT_ROLE = "matrix"
GOOD = {"published", "deployed", "served"}  # no deploy targets here: published is the end


def _kind(kind: str) -> Callable[..., list[Rule]]:
    return lambda p, **w: [Rule(kind, p, method="POST", **w)]


def _vault_error(status: int, message: str) -> Callable[..., list[Rule]]:
    return lambda p, **w: [Rule("answer", p, method="POST", status=status, body={"errors": [message]}, **w)]


# fault -> (the rules, what the recorded error must say)
FAULTS: dict[str, tuple[Callable[..., list[Rule]], str]] = {
    "server-error": (lambda p, **w: [acme_faults.server_error(p, **w)], "overloaded"),
    "rate-limited": (lambda p, **w: [acme_faults.rate_limited(p, retry_after=1, **w)], "rateLimited"),
    "bad-nonce": (lambda p, **w: [acme_faults.bad_nonce(p, **w)], "badNonce"),
    "account-gone": (lambda p, **w: [acme_faults.account_gone(p, **w)], "accountDoesNotExist"),
    "hang": (_kind("hang"), "attempt_timeout"),
    "reset": (_kind("reset"), ""),
    "refuse": (_kind("refuse"), ""),
    "stuck-processing": (lambda p, **w: acme_faults.stuck_processing(**w), "'processing'"),
    "wrong-certificate": (lambda p, **w: [acme_faults.wrong_certificate(**w)], "does not match"),
}
VAULT_FAULTS: dict[str, tuple[Callable[..., list[Rule]], str]] = {
    "server-error": (_vault_error(500, "internal error"), "internal error"),
    "rate-limited": (_vault_error(429, "rate limit quota exceeded"), "429"),
    "sealed": (_vault_error(503, "Vault is sealed"), "sealed"),
    "hang": (_kind("hang"), "attempt_timeout"),
    "reset": (_kind("reset"), ""),
    "refuse": (_kind("refuse"), ""),
}
ANY_PHASE = ("server-error", "rate-limited", "bad-nonce", "account-gone", "hang", "reset", "refuse")
PHASES = (Phase.ORDER, Phase.CHALLENGE, Phase.FINALIZE, Phase.DOWNLOAD)
OWN_PHASE = {"stuck-processing": Phase.FINALIZE, "wrong-certificate": Phase.DOWNLOAD}
VAULT_PHASES = {"login": "/v1/auth/approle/login", "sign": "/v1/pki/sign/"}
# The load balancer's faults, on the local CA: a deploy command that fails while a flag file exists (the load
# balancer down: "connection refused"), or hangs past its timeout. What the recorded error must say.
LB_FAULTS = {"lb-down": "connection refused", "hook-hangs": "timed out"}
# HAProxy's faults, through a runtime-socket proxy per cell in front of one real HAProxy serving every HAProxy
# cell's certificate by SNI: its locked answer, no socket at all (stopped), and a HAProxy that says yes to the
# new certificate and keeps the old one loaded. (Stopped past the deadline or expiry is not a danger: the new
# certificate stays published for its start; tests/test_lb_down_five_minutes.py covers that.)
HAPROXY_CELLS = [("locked", "brief"), ("locked", "past-deadline"), ("down", "brief"), ("keeps-old", "brief"),
                 ("keeps-old", "past-deadline"), ("keeps-old", "past-expiry"), ("crash", "brief")]
HAPROXY_FAULTS = {"locked": "locked", "down": "does not exist", "keeps-old": "expected", "crash": "crashed"}
# The crash cell has a HAProxy of its own (killed on the commit, as 2.6 was seen to die, started again when the
# fault ends): between the two, nothing may say its certificate is deployed or served.
# Failures retrying cannot fix (a certificate for another key): held back until the hard deadline by design
# (an hour or more on a long-lived certificate), so even a brief one is critical for a while.
HOPELESS = {"wrong-certificate"}
LB_COMMANDS = {"lb-down": "test ! -e {flag} || {{ echo 'connection refused' >&2; exit 1; }}",
               "hook-hangs": "test ! -e {flag} || sleep 30"}


@dataclass(frozen=True)
class Cell:
    ca: str  # acme (Pebble) or vault (OpenBao)
    fault: str
    phase: str  # the label of the requests the fault hits
    duration: str  # brief, past-deadline, past-expiry

    @property
    def name(self) -> str:
        return f"{self.ca}-{self.fault}-{self.phase}-{self.duration}"

    @property
    def path(self) -> str:
        if self.ca in ("local", "haproxy"):
            return ""
        return VAULT_PHASES[self.phase] if self.ca == "vault" else Phase[self.phase.upper()].value

    @property
    def fault_rules(self) -> tuple[Callable[..., list[Rule]], str]:
        if self.ca == "local":  # the fault is the load balancer's (a flag file the deploy command reads)
            return (lambda p, **w: []), LB_FAULTS[self.fault]
        if self.ca == "haproxy":  # the fault is in the cell's runtime-socket proxy
            return (lambda p, **w: []), HAPROXY_FAULTS[self.fault]
        return (VAULT_FAULTS if self.ca == "vault" else FAULTS)[self.fault]


def cells() -> list[Cell]:
    def acme(fault: str, phase: Phase, duration: str) -> Cell:
        return Cell("acme", fault, phase.name.lower(), duration)

    made = [acme(f, p, "brief") for f in ANY_PHASE for p in PHASES]
    made += [acme(f, p, "brief") for f, p in OWN_PHASE.items()]
    for duration in ("past-deadline", "past-expiry"):
        made += [acme(f, OWN_PHASE.get(f, Phase.FINALIZE), duration) for f in FAULTS]
    made += [Cell("vault", f, p, "brief") for f in VAULT_FAULTS for p in VAULT_PHASES]
    made += [Cell("vault", f, "sign", "past-deadline") for f in ("server-error", "sealed", "hang")]
    made += [Cell("vault", f, "sign", "past-expiry") for f in ("hang", "refuse")]
    made += [Cell("local", "lb-down", "deploy", d) for d in ("brief", "past-deadline", "past-expiry")]
    made += [Cell("local", "hook-hangs", "deploy", "brief")]
    made += [Cell("haproxy", f, "deploy", d) for f, d in HAPROXY_CELLS]
    return made


def _config(pebble: PebbleServer, vault: OpenBaoServer, tmp: Path, webroot: Path,
            proxies: dict[str, HttpFaultProxy], port: int, runtime_dir: Path,
            haproxy_ports: tuple[int, int]) -> str:
    roots = tmp / "pebble-roots.pem"
    roots.write_bytes(pebble.roots_pem())
    (tmp / "vault-root.pem").write_text(vault.root_pem())
    # check_interval well above the retry intervals: retries must come from the daemon's wake-ups, on time.
    body = [f'[database]\nurl = "sqlite:///{tmp}/certd.db"\n',
            f'[daemon]\nworkers = 12\ncheck_interval = "30s"\napi_listen = "127.0.0.1:{port}"\n']
    body += [f'[issuers.local]\ntype = "local-ca"\ndir = "{tmp}/local-ca"\n']
    for cell in cells():
        if cell.ca == "local":
            flag = tmp / "down" / cell.name
            body += [f"[deploy.{cell.name}]", 'type = "command"', 'timeout = "2s"',
                     f'argv = ["sh", "-c", "{LB_COMMANDS[cell.fault].format(flag=flag)}"]', "",
                     f"[certificates.{cell.name}]", 'issuer = "local"',
                     f'names = ["{cell.name}.matrix.example.test"]', f'output_dir = "{tmp}/out/{cell.name}"',
                     f'lifetime = "{VALIDITY}s"', f"renew_fraction = {RENEW_FRACTION}",
                     f'deploy = ["{cell.name}"]', "rollback = true", ""]
    for cell in cells():
        if cell.ca == "haproxy":
            sni = f"{cell.name}.matrix.example.test"
            body += [f"[deploy.{cell.name}]", 'type = "haproxy"', f'socket = "{runtime_dir / cell.name}"',
                     f'cert = "{tmp}/out/{cell.name}/combined.pem"', "",
                     f"[certificates.{cell.name}]", 'issuer = "local"', f'names = ["{sni}"]',
                     f'output_dir = "{tmp}/out/{cell.name}"', f'lifetime = "{VALIDITY}s"',
                     f"renew_fraction = {RENEW_FRACTION}", f'deploy = ["{cell.name}"]', "rollback = true",
                     f'verify = [{{ endpoint = "127.0.0.1:{haproxy_ports[cell.fault == "crash"]}", sni = "{sni}", '
                     f'ca_bundle = "{tmp}/local-ca/root.pem" }}]', ""]
    for name, proxy in proxies.items():
        if name.startswith("vault-"):
            body += [f"[issuers.{name}]", 'type = "vault"', f'url = "{proxy.url}"',
                     f'ca_bundle = "{vault.ca_bundle_path}"', f'roots = "{tmp}/vault-root.pem"',
                     f'role = "{VAULT_ROLE}"', 'auth = "approle"', f'role_id_file = "{tmp}/role_id"',
                     f'secret_id_file = "{tmp}/secret_id"', f'attempt_timeout = "{ATTEMPT_TIMEOUT}s"', ""]
            extra = f'lifetime = "{VALIDITY}s"'
        else:
            body += [f"[issuers.{name}]", 'type = "acme"', f'directory = "{proxy.url}/dir"',
                     f'ca_bundle = "{pebble.ca_bundle}"', f'roots = "{roots}"', f'http01_webroot = "{webroot}"',
                     f'attempt_timeout = "{ATTEMPT_TIMEOUT}s"', f"[issuers.{name}.rate_limits]",
                     "duplicate_certificates = 1000", ""]
            extra = ""
        body += [f"[certificates.{name}]", f'issuer = "{name}"', f'names = ["{name}.matrix.example.test"]',
                 f'output_dir = "{tmp}/out/{name}"', f"renew_fraction = {RENEW_FRACTION}", extra, ""]
    return "\n".join(body)


@pytest.fixture
def matrix_pebble(pebble_factory: Callable[..., PebbleServer]) -> PebbleServer:
    return pebble_factory(certificate_validity=VALIDITY, extra_env={"PEBBLE_AUTHZREUSE": "0"}, nonce_reject=0)


@pytest.fixture
def webroot(matrix_pebble: PebbleServer, tmp_path: Path) -> Iterator[Path]:
    """One static server on Pebble's HTTP-01 port for every cell's tokens (one port: one standalone listener)."""
    root = tmp_path / "webroot"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", matrix_pebble.http01_port),
                                             functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root
    server.shutdown()
    server.server_close()


@pytest.fixture
def matrix_vault(openbao: OpenBaoServer, tmp_path: Path) -> OpenBaoServer:
    """The shared OpenBao with a role for the matrix's names and an AppRole whose tokens live 10 s, so the
    login phase is part of every renewal."""
    openbao.add_role(VAULT_ROLE, allowed_domains="matrix.example.test", allow_subdomains=True, key_type="any",
                     max_ttl="24h")
    _, role_id, secret_id = openbao.approle(token_ttl="10s")
    (tmp_path / "role_id").write_text(role_id + "\n")
    (tmp_path / "secret_id").write_text(secret_id + "\n")
    return openbao


@pytest.fixture
def proxies(matrix_pebble: PebbleServer, matrix_vault: OpenBaoServer) -> Iterator[dict[str, HttpFaultProxy]]:
    made = {cell.name: HttpFaultProxy(matrix_vault.url, Path(matrix_vault.workdir)) if cell.ca == "vault"
            else acme_faults.proxy_for(matrix_pebble) for cell in cells() if cell.ca in ("acme", "vault")}
    yield made
    for proxy in made.values():
        proxy.close()


def _mono(at: datetime) -> float:
    return time.monotonic() + (at - datetime.now(UTC)).total_seconds()


def _lift(cell: Cell, doc: dict[str, str]) -> datetime:
    not_after = datetime.fromisoformat(doc["not_after"])
    if cell.duration == "brief":
        return datetime.fromisoformat(doc["renew_at"]) + timedelta(seconds=12)
    if cell.duration == "past-deadline":
        return datetime.fromisoformat(doc["hard_deadline"]) + timedelta(seconds=4)
    return not_after + timedelta(seconds=4)


@pytest.mark.slow
def test_every_ca_fault_at_every_phase_holds_the_invariants(
    matrix_pebble: PebbleServer, matrix_vault: OpenBaoServer, proxies: dict[str, HttpFaultProxy], webroot: Path,
    tmp_path: Path, write_config: WriteConfig,
) -> None:
    port, haproxy_ports = free_port(), (free_port(), free_port())  # the shared HAProxy, the crash cell's own
    runtime_dir = Path(tempfile.mkdtemp(prefix="rt-"))  # a Unix socket path holds at most 107 bytes
    haproxy_dir, crash_dir = Path(tempfile.mkdtemp(prefix="hap-")), Path(tempfile.mkdtemp(prefix="hapx-"))
    config = write_config(_config(matrix_pebble, matrix_vault, tmp_path, webroot, proxies, port, runtime_dir,
                                  haproxy_ports))
    by_name = {cell.name: cell for cell in cells()}
    on_haproxy = [n for n, c in by_name.items() if c.ca == "haproxy" and c.fault != "crash"]
    crash = next(n for n, c in by_name.items() if c.ca == "haproxy" and c.fault == "crash")
    servers: list[HaproxyServer] = []
    runtime: dict[str, RuntimeProxy] = {}  # made once HAProxy runs: before, no socket means "not running"
    daemon = Daemon(config, port, tmp_path / "daemon.log")
    checker = Checker(daemon.url, {n: tmp_path / "out" / n for n in by_name}, cli=certd, config=config)
    checking = time.monotonic()  # again when the checker starts
    try:
        docs = _first_issuance(daemon, by_name)
        # HAProxy starts on the certificates the daemon published (not running at their first issue, so their
        # deploy was left pending); `certd deploy` completes it, as an operator would.
        servers.append(HaproxyServer(tmp_path / "out" / on_haproxy[0] / "combined.pem", workdir=haproxy_dir,
                                     port=haproxy_ports[0], more_crts=[tmp_path / "out" / n / "combined.pem"
                                                                       for n in on_haproxy[1:]]))
        crashing = HaproxyServer(tmp_path / "out" / crash / "combined.pem", workdir=crash_dir, port=haproxy_ports[1])
        servers.append(crashing)
        runtime.update({n: RuntimeProxy(haproxy_dir / "admin.sock", runtime_dir / n) for n in on_haproxy})
        runtime[crash] = RuntimeProxy(crash_dir / "admin.sock", runtime_dir / crash, haproxy_pid=crashing.pid)
        for name in [*on_haproxy, crash]:
            deployed = certd("deploy", name, "--json", config=config)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        docs = {d["name"]: d for d in daemon.get("/v1/certificates").json()["certificates"]}
        lifts = {}
        injected = time.monotonic()
        for name, cell in by_name.items():
            make, _ = cell.fault_rules
            lifts[name] = _lift(cell, docs[name])
            if cell.ca == "local":
                flag = tmp_path / "down" / name
                flag.parent.mkdir(exist_ok=True)
                flag.touch()
                lifted = threading.Timer(_mono(lifts[name]) - time.monotonic(), flag.unlink)
                lifted.daemon = True
                lifted.start()
            if cell.ca == "haproxy":
                _haproxy_fault(runtime[name], cell, tmp_path / "out" / name / "combined.pem", _mono(lifts[name]))
            if name == crash:  # started again (same config, same port) when the fault ends
                again = threading.Timer(_mono(lifts[name]) - time.monotonic(), lambda: servers.append(
                    HaproxyServer(tmp_path / "out" / crash / "combined.pem", workdir=crash_dir,
                                  port=haproxy_ports[1])))
                again.daemon = True
                again.start()
            # The challenge phase is the authorization too: a Pebble that reuses a valid authorization now and then
            # (seen even with PEBBLE_AUTHZREUSE=0) is still asked for it, so the fault is hit either way.
            paths = [Phase.AUTHZ.value, cell.path] if cell.path == Phase.CHALLENGE.value else [cell.path]
            for path in paths if cell.ca == "acme" else [cell.path]:
                for rule in make(path, end=_mono(lifts[name])):
                    proxies[name].add(rule)
        checker.start()
        checking = time.monotonic()
        ends = max(datetime.fromisoformat(d["not_after"]) for d in docs.values()) + timedelta(seconds=25)
        while datetime.now(UTC) < ends and daemon.proc.poll() is None:
            time.sleep(1)
        final = {d["name"]: d for d in daemon.get("/v1/certificates").json()["certificates"]}
    finally:
        checker.stop()
        checked = time.monotonic() - checking
        daemon.stop()
        for proxy in runtime.values():
            proxy.close()
        for server in servers:
            server.stop()
        for made in (runtime_dir, haproxy_dir, crash_dir):
            shutil.rmtree(made, ignore_errors=True)
    log = (tmp_path / "daemon.log").read_text()
    # Enough looking happened: a sample every 4 s at worst (one takes ~2 s on a busy 2-core machine, every
    # published file read twice), the CLI every 30 s.
    assert checker.samples >= checked / 4, (checker.samples, checked)
    assert checker.cli_samples >= checked / 30, (checker.cli_samples, checked)
    assert checker.violations == [], (checker.violations[:20], log[-3000:])
    problems: list[str] = []
    for name, cell in by_name.items():
        problems += _cell_problems(cell, docs[name], final[name], lifts[name], checker, proxies.get(name), config,
                                   injected)
    crashed_at = runtime[crash].crashed_at
    said = {s for at, s in checker.records[crash].statuses if crashed_at and crashed_at < at < _mono(lifts[crash])}
    if crashed_at is None or said & GOOD:  # a dead HAProxy reported as a success
        problems.append(f"{crash}: crashed at {crashed_at}, and said {sorted(said)} while HAProxy was dead")
    (tmp_path / "problems.txt").write_text("\n".join(problems))
    assert problems == [], "\n".join(problems)


def _haproxy_fault(proxy: RuntimeProxy, cell: Cell, combined: Path, end: float) -> None:
    if cell.fault == "crash":
        proxy.crash_on("commit ssl cert")
    elif cell.fault == "locked":
        proxy.answer_until("set ssl cert", LOCKED, end)
    elif cell.fault == "down":
        proxy.down_until(end)
    else:  # keeps-old: HAProxy's own words for a set and a commit that went through, and nothing done
        proxy.answer_until("set ssl cert", f"Transaction updated for certificate {combined}!\n", end)
        proxy.answer_until("commit ssl cert", f"Committing {combined}\nSuccess!\n", end)


def _first_issuance(daemon: Daemon, by_name: dict[str, Cell]) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        docs = {d["name"]: d for d in daemon.get("/v1/certificates").json()["certificates"]}
        if all(docs[n]["status"] in GOOD for n in by_name):
            return docs
        time.sleep(0.5)
    raise AssertionError(f"not all issued: {[n for n in by_name if docs[n]['status'] not in GOOD]}")


def _cell_problems(cell: Cell, first: dict[str, str], final: dict[str, str], lift: datetime, checker: Checker,
                   proxy: HttpFaultProxy | None, config: Path, injected: float) -> list[str]:
    name, record = cell.name, checker.records[cell.name]
    found: list[str] = []
    statuses = {s for _, s in record.statuses}
    if proxy is not None and proxy.errors:
        found.append(f"{name}: the fault proxy's rule failed: {proxy.errors[:2]}")
    if proxy is not None and sum(rule.hits for rule in proxy.rules) == 0:
        found.append(f"{name}: the fault was never hit: the cell proves nothing")
    if final["status"] not in GOOD or final["serial"] == first["serial"]:
        found.append(f"{name}: not renewed in the end: {final['status']} {final['status_message']}")
    if "failing" not in statuses and not statuses & {"critical", "expired"}:
        found.append(f"{name}: the fault was never shown: {sorted(statuses)}")
    if cell.duration != "past-expiry" and record.expired_at:
        found.append(f"{name}: the served certificate expired while the CA could issue")
    if cell.duration == "brief" and statuses & {"critical", "expired"} and cell.fault not in HOPELESS:
        found.append(f"{name}: a brief fault reached {sorted(statuses)}")
    # A CA-side fault leaves the old certificate on disk until the renewal: these cells must have reached the
    # deadline or expiry and said so. A load balancer's fault swaps the issued one in and out at every retry
    # (published, then rolled back), so whether a sample fell in the deadline is timing; the invariants hold
    # either way, sample by sample.
    ca_side = cell.ca in ("acme", "vault")
    if ca_side and cell.duration == "past-deadline" and "critical" not in statuses:
        found.append(f"{name}: never critical inside the hard deadline: {sorted(statuses)}")
    if cell.duration == "past-expiry":
        if ca_side and "expired" not in statuses:
            found.append(f"{name}: never shown expired: {sorted(statuses)}")
        if record.renewed_at is None or record.renewed_at > _mono(lift) + 15:
            found.append(f"{name}: not renewed within 15 s of the CA's return")
    history = json.loads(certd("history", name, "--json", config=config).stdout)
    failed = [e for e in history["events"] if e["kind"] in ("renewal.failed", "deploy.failed")]  # all in the episode
    _, cause = cell.fault_rules
    if not failed or not all(e.get("step") for e in failed) or cause not in " ".join(e["message"] for e in failed):
        found.append(f"{name}: failures not recorded with step and cause: {failed[:2]}")
    lost = [e["message"] for e in history["events"] if "no longer on disk" in e["message"]]
    if lost:  # keep counted failed generations: the last good one was deleted under the rollback
        found.append(f"{name}: the rollback target was lost: {lost[:1]}")
    # The episode: from the fault's start to the first renewal served after it (later renewals are routine).
    until = record.renewed_at if record.renewed_at is not None else float("inf")
    if proxy is None:
        # A failure after issuance is rolled out again, never ordered again while the issued version has its
        # life ahead: each new version must come after the one before it reached its own renewal time.
        since_wall = datetime.now(UTC) - timedelta(seconds=time.monotonic() - injected)
        made = sorted((v for v in history["versions"] if datetime.fromisoformat(v["created_at"]) >= since_wall),
                      key=lambda v: v["created_at"])
        early = [b["serial"] for a, b in itertools.pairwise(made)
                 if datetime.fromisoformat(b["created_at"]) < datetime.fromisoformat(a["renew_at"])]
        if early:
            found.append(f"{name}: ordered again ({early}) while the version issued before had its life ahead")
        return found
    issued = ("/v1/pki/sign/", 200) if cell.ca == "vault" else (Phase.ORDER.value, 201)
    orders = proxy.count(issued[0], method="POST", status=issued[1], since=injected, until=until)
    bound = (len(failed) + 1) * (2 if cell.fault == "account-gone" else 1)  # one per attempt (two:
    if orders > bound:  # registered again and ordered again), the successful one included
        found.append(f"{name}: {orders} orders for {len(failed)} failed attempts (bound {bound})")
    return found
