"""`make demo`: the article's load balancer on this machine, with certd rotating every certificate under traffic.

HAProxy is the edge (certificate from Pebble over ACME, or from certd's local CA when Pebble is not installed),
re-encrypting to two nginx backends whose certificates come from certd's local CA. certd issues all three,
the daemon renews them every few seconds, and a client sends requests through HAProxy the whole time. At the
end: what was sent and what failed, the serials each server handed out, whether HAProxy kept its pid and the
backends stayed up, and `certd list`. Exit 0 only if nothing failed and every certificate rotated.

Everything lives in var/demo (rendered from the templates in deploy/demo/) and everything started here is
stopped before this exits, also on Ctrl-C, SIGTERM or an error. Not part of the certd package: it drives the
`certd` command like an operator would. Run through scripts/demo.sh; DEMO_SECONDS sets the traffic time,
DEMO_EDGE=local-ca skips Pebble even if it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "deploy" / "demo"
HOST = "127.0.0.1"
EDGE_NAME = "lb.example.test"
BACKENDS = ("backend-1", "backend-2")
CERTS = ("edge", *BACKENDS)
RATE = 10.0  # requests per second through HAProxy
STARTUP_TIMEOUT = 20.0


class DemoError(Exception):
    """Something the demo needs did not work; the message says what and where its log is."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""


def say(msg: str = "") -> None:
    """Print now; a closed stdout (`make demo | head`) silences the demo but must not cut its cleanup short."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def step(msg: str) -> None:
    say(f"==> {msg}")


# --- ports, templates, files ---------------------------------------------------------------------------------


def free_ports(n: int, *, udp_first: bool = False) -> list[int]:
    """n distinct loopback ports that nothing listens on now (the first one also free for UDP, for DNS)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port in ports:
            continue
        if udp_first and not ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
        ports.append(port)
    return ports


def render(template: str, values: Mapping[str, object]) -> str:
    """Replace every {{name}}; a placeholder without a value is an error, not an empty string."""
    text = (TEMPLATES / template).read_text()

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise DemoError(f"deploy/demo/{template}: no value for {{{{{m.group(1)}}}}}")
        return str(values[m.group(1)])

    return re.sub(r"\{\{([a-z0-9_]+)\}\}", sub, text)


def write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)
    return path


def tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def short(serial: str) -> str:
    """Enough of a serial to tell one from the next; the full ones are in summary.json and `certd list`."""
    return serial[:8]


def listener_cert(directory: Path) -> Path:
    """Pebble ships no key for its own HTTPS listener: a throwaway CA and a cert for 127.0.0.1/localhost."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certd demo: Pebble listener CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    write(directory / "listener.pem", leaf.public_bytes(pem))
    write(directory / "listener.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), 0o600)
    return write(directory / "listener-ca.pem", ca.public_bytes(pem))


# --- processes -----------------------------------------------------------------------------------------------


def session_members(sid: int) -> list[int]:
    """Every process in session `sid` (each server runs in its own): workers a master forked included."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


class Proc:
    """A server in its own session (Ctrl-C in the terminal does not reach it: the demo stops it, in order)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, stop_signal: int = signal.SIGTERM) -> None:
        self.name, self.log, self.stop_signal = name, log, stop_signal
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=dict(env) if env is not None else None, cwd=cwd,
                                          start_new_session=True)
        self.pid = self.popen.pid
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise DemoError(f"{self.name} exited ({self.popen.returncode}) before {what}; "
                                f"{self.log}:\n{tail(self.log)}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise DemoError(f"{self.name}: no {what} after {timeout:.0f} s; {self.log}:\n{tail(self.log)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """The server's own stop signal, then SIGKILL for the whole session if it lingers."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"    {self.name} did not stop within {timeout:.0f} s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.returncode = self.popen.returncode
        for pid in session_members(self.pid):  # e.g. nginx workers whose master died first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Estate:
    """Every process the demo started, in start order; the session ids also go to a file for demo.sh's trap."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: list[Proc] = []
        self._sessions = directory / "run" / "sessions"

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, stop_signal: int = signal.SIGTERM) -> Proc:
        proc = Proc(name, argv, self.dir / "logs" / f"{name}.log", env=env, cwd=cwd, stop_signal=stop_signal)
        self.procs.append(proc)
        self._sessions.parent.mkdir(parents=True, exist_ok=True)
        with open(self._sessions, "a") as fh:
            fh.write(f"{proc.pid} {name}\n")
        return proc

    def stop_all(self) -> list[str]:
        """Newest first (the daemon, then HAProxy, nginx, Pebble); what is still running afterwards, if anything."""
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                say(f"    stopping {proc.name} failed: {exc}")
        return [f"{p.name} (pid {pid})" for p in self.procs for pid in session_members(p.pid)]


# --- HAProxy runtime API, TLS probes -------------------------------------------------------------------------


def haproxy(sock: Path, command: str, timeout: float = 5.0) -> str:
    """One command per connection: HAProxy answers and closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def server_states(sock: Path) -> dict[str, dict[str, str]]:
    """`show stat` rows of backend `app`, by server name: status (UP, DOWN, UP 1/3, ...), chkfail, chkdown."""
    text = haproxy(sock, "show stat").lstrip("# ")
    return {row["svname"]: row for row in csv.DictReader(text.splitlines())
            if row.get("pxname") == "app" and row.get("svname") in BACKENDS}


def loaded_serial(sock: Path, cert: Path) -> str:
    m = re.search(r"^Serial:\s*([0-9A-Fa-f]+)", haproxy(sock, f"show ssl cert {cert}"), re.M)
    return f"{int(m.group(1), 16):x}" if m else "?"


def served_serial(port: int, sni: str, ctx: ssl.SSLContext) -> str:
    with socket.create_connection((HOST, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def edge_tls(port: int, cafile: Path) -> dict[str, str]:
    """One handshake per TLS version with the edge: "ok", or why it was refused (TLS 1.1 must be)."""
    found = {}
    for label, version in (("1.1", ssl.TLSVersion.TLSv1_1), ("1.2", ssl.TLSVersion.TLSv1_2),
                           ("1.3", ssl.TLSVersion.TLSv1_3)):
        ctx = ssl.create_default_context(cafile=str(cafile))
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point of asking for it
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer 1.1, so a refusal is the server's
            ctx.minimum_version = ctx.maximum_version = version
        try:
            with socket.create_connection((HOST, port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=EDGE_NAME):
                found[label] = "ok"
        except ssl.SSLError as exc:
            found[label] = f"refused ({exc.reason or exc})"
        except OSError as exc:
            found[label] = f"refused ({exc})"
    return found


# --- traffic and watching ------------------------------------------------------------------------------------


@dataclass
class Seen:
    """Serials in the order a server first handed them out."""

    serials: list[str] = field(default_factory=list)

    def add(self, serial: str) -> bool:
        if serial in self.serials or serial == "?":
            return False
        self.serials.append(serial)
        return True

    @property
    def rotations(self) -> int:
        return max(len(self.serials) - 1, 0)


class Watch:
    """The request loop (RATE per second through HAProxy) and a once-a-second look at every server."""

    def __init__(self, *, edge_port: int, backend_ports: Mapping[str, int], sock: Path, edge_crt: Path,
                 edge_ca: Path, backend_ca: Path) -> None:
        self.edge_port, self.backend_ports, self.sock, self.edge_crt = edge_port, backend_ports, sock, edge_crt
        self.edge_ctx, self.backend_ctx = client_context(edge_ca), client_context(backend_ca)
        self.sent = self.failed = 0
        self.reasons: Counter[str] = Counter()
        self.answered_by: Counter[str] = Counter()
        self.tls_versions: Counter[str] = Counter()
        self.seen = {name: Seen() for name in CERTS}
        self.haproxy_loaded = Seen()
        self.not_up: Counter[str] = Counter()  # polls where a backend was not plainly UP, by "server status"
        self.polls = 0
        self.pids: set[int] = set()
        self.watch_errors: Counter[str] = Counter()
        self.states: dict[str, dict[str, str]] = {}
        self.t0 = self.t_end = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._requests, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def stop(self) -> float:
        """Stop both loops (idempotent); how long the traffic ran."""
        if not self._stop.is_set():
            self._stop.set()
            self.t_end = time.monotonic()
            for t in self._threads:
                t.join(10)
        return self.t_end - self.t0

    def _event(self, msg: str) -> None:
        say(f"    {time.monotonic() - self.t0:6.1f}s  {msg}")

    def _requests(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            reason = self._one_request()
            with self._lock:
                self.sent += 1
                if reason:
                    self.failed += 1
                    self.reasons[reason] += 1
            if reason and self.reasons[reason] <= 3:
                self._event(f"request failed: {reason}")
            due = max(due + 1 / RATE, time.monotonic())
            self._stop.wait(max(due - time.monotonic(), 0))

    def _one_request(self) -> str | None:
        """None if the answer was right in every way the article asks for; else why not."""
        try:
            with socket.create_connection((HOST, self.edge_port), timeout=5) as raw, \
                    self.edge_ctx.wrap_socket(raw, server_hostname=EDGE_NAME) as tls:
                der = tls.getpeercert(binary_form=True)
                version = tls.version() or "?"
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {EDGE_NAME}\r\nUser-Agent: certd-demo\r\n"
                            "Connection: close\r\n\r\n".encode())
                resp = http.client.HTTPResponse(tls)
                resp.begin()
                body = resp.read().decode(errors="replace")
        except ssl.SSLCertVerificationError as exc:
            return f"edge certificate did not verify: {exc.verify_message}"
        except ssl.SSLError as exc:
            return f"TLS: {exc.reason or exc}"
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        assert der is not None
        serial = f"{x509.load_der_x509_certificate(der).serial_number:x}"
        with self._lock:
            self.tls_versions[version] += 1
            new = self.seen["edge"].add(serial)
        if new:
            self._event(f"edge        clients get serial {short(serial)}" +
                        (" (new: swapped over the runtime API)" if self.seen["edge"].rotations else ""))
        if resp.status != 200:
            return f"HTTP {resp.status} from HAProxy"
        if not (resp.getheader("Strict-Transport-Security") or "").startswith("max-age="):
            return "no Strict-Transport-Security header"
        backend, _, rest = body.strip().partition(" ")
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        request_id = resp.getheader("X-Request-ID") or ""
        if backend not in BACKENDS:
            return f"unexpected answer {body[:60]!r}"
        if fields.get("proto") != "https":
            return f"{backend} got X-Forwarded-Proto {fields.get('proto')!r}"
        if not request_id or fields.get("request_id") != request_id:
            return f"{backend} got X-Request-ID {fields.get('request_id')!r}, client got {request_id!r}"
        with self._lock:
            self.answered_by[backend] += 1
        return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._look()
            self._stop.wait(1.0)

    def _look(self) -> None:
        try:
            states = server_states(self.sock)
            pid = int(re.search(r"^Pid:\s*(\d+)", haproxy(self.sock, "show info"), re.M).group(1))  # type: ignore[union-attr]
            loaded = loaded_serial(self.sock, self.edge_crt)
        except (OSError, ValueError, AttributeError) as exc:
            with self._lock:
                self.watch_errors[f"HAProxy runtime API: {exc}"] += 1
            return
        with self._lock:
            self.polls += 1
            self.pids.add(pid)
            before, self.states = self.states, states
            for name in BACKENDS:
                status = states.get(name, {}).get("status", "missing")
                if status != "UP":
                    self.not_up[f"{name} {status}"] += 1
            self.haproxy_loaded.add(loaded)
        for name in BACKENDS:  # say when HAProxy's view of a backend changes (UP, UP 1/3, DOWN, ...)
            now, was = states.get(name, {}), before.get(name, {"status": "UP"})
            if now.get("status", "missing") != was.get("status"):
                self._event(f"{name}   HAProxy says {now.get('status', 'missing')} (check: {now.get('check_status')})")
        for name, port in self.backend_ports.items():
            try:
                serial = served_serial(port, f"{name}.internal", self.backend_ctx)
            except (OSError, ssl.SSLError) as exc:
                with self._lock:
                    self.watch_errors[f"{name}: {exc}"] += 1
                continue
            with self._lock:
                new = self.seen[name].add(serial)
            if new:
                self._event(f"{name}   nginx serves serial {short(serial)}" +
                            (" (new: after SIGHUP)" if self.seen[name].rotations else ""))

    def progress(self) -> str:
        with self._lock:
            up = " ".join(f"{n} {self.states.get(n, {}).get('status', '?')}" for n in BACKENDS)
            return (f"{self.sent} requests, {self.failed} failed; rotations: " +
                    ", ".join(f"{n} {self.seen[n].rotations}" for n in CERTS) + f"; {up}")


# --- the demo ------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    dir: Path
    certd: Path
    config: Path
    ports: dict[str, int]
    acme: bool

    def certd_cmd(self, *args: str) -> list[str]:
        return [str(self.certd), "-c", str(self.config), *args]


def certd(layout: Layout, *args: str, why: str = "") -> subprocess.CompletedProcess[str]:
    step(f"certd {' '.join(args)}" + (f"   ({why})" if why else ""))
    proc = subprocess.run(layout.certd_cmd(*args), capture_output=True, text=True, timeout=300, check=False)
    if proc.stdout.strip():
        say(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise DemoError(f"certd {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def start_pebble(estate: Estate, layout: Layout) -> Path:
    """pebble-challtestsrv as Pebble's DNS (every name is 127.0.0.1, no AAAA), then Pebble; returns its root."""
    p, pdir = layout.ports, layout.dir / "pebble"
    ca = listener_cert(pdir)
    conf = write(pdir / "pebble.json", render("pebble.json", {"dir": layout.dir, **p}))
    json.loads(conf.read_text())  # a template that renders to broken JSON fails here, not inside Pebble
    dns = estate.start("challtestsrv", [
        "pebble-challtestsrv", "-dns01", f"{HOST}:{p['dns_port']}", "-management", f"{HOST}:{p['dns_mgmt_port']}",
        "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", HOST, "-defaultIPv6", ""])
    dns.wait_until(lambda: tcp_open(p["dns_mgmt_port"]) and tcp_open(p["dns_port"]), "DNS port")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env["PEBBLE_VA_NOSLEEP"] = "1"  # no random validation delay; nonce rejection stays at Pebble's default 5 %
    pebble = estate.start("pebble", ["pebble", "-config", str(conf), "-dnsserver", f"{HOST}:{p['dns_port']}"],
                          env=env, cwd=pdir)
    ctx = ssl.create_default_context(cafile=str(ca))

    def get(path: str, port: int) -> bytes:
        with urllib.request.urlopen(f"https://{HOST}:{port}{path}", context=ctx, timeout=5) as r:
            return bytes(r.read())

    pebble.wait_until(lambda: bool(get("/dir", p["acme_port"])), "ACME directory")
    roots = write(pdir / "roots.pem", get("/roots/0", p["acme_mgmt_port"]))
    say(f"    Pebble {HOST}:{p['acme_port']} (ACME), validating HTTP-01 at {HOST}:{p['http01_port']} "
        f"(certd answers), names resolved by pebble-challtestsrv; 80 s certificates")
    return roots


def port_key(backend: str) -> str:
    """The template placeholder of a backend's port: backend-1 -> backend_1_port."""
    return f"{backend.replace('-', '_')}_port"


def prepare(directory: Path, certd_bin: Path, want_acme: bool) -> Layout:
    names = ["dns_port", "dns_mgmt_port", "acme_port", "acme_mgmt_port", "http01_port", "tlsalpn01_port",
             "edge_port", "backend_1_port", "backend_2_port", "api_port"]
    ports = dict(zip(names, free_ports(len(names), udp_first=True), strict=True))
    layout = Layout(directory, certd_bin, directory / "certd.toml", ports, want_acme)
    values = {"dir": directory, **ports}
    edge = render("edge-acme.toml" if want_acme else "edge-local-ca.toml", values)
    write(layout.config, render("certd.toml", values) + edge)
    write(directory / "haproxy.cfg", render("haproxy.cfg", values))
    for name in BACKENDS:
        for sub in ("tmp", "logs"):
            (directory / name / sub).mkdir(parents=True, exist_ok=True)
        port = ports[port_key(name)]
        write(directory / name / "nginx.conf", render("nginx-backend.conf", {**values, "name": name, "port": port}))
    return layout


@dataclass
class Outcome:
    watch: Watch | None = None
    haproxy_pid: int = 0
    haproxy_alive_at_end: bool = False
    daemon_alive_at_end: bool = False
    interrupted: bool = False
    error: str = ""
    edge_tls: str = ""
    listed: bool = False
    left_running: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _listening(port: int, pid_file: Path) -> Callable[[], bool]:
    return lambda: tcp_open(port) and pid_file.exists()


def run(estate: Estate, layout: Layout, seconds: float, out: Outcome) -> None:
    d, p = layout.dir, layout.ports
    edge_ca = start_pebble(estate, layout) if layout.acme else d / "local-ca" / "root.pem"
    certd(layout, "check-config")
    certd(layout, "renew", "--all", why="first start: nothing runs yet, so deploys are pending")
    for name in BACKENDS:
        port = p[port_key(name)]
        nginx = estate.start(name, ["nginx", "-c", str(d / name / "nginx.conf"), "-p", str(d / name), "-e", "stderr",
                                    "-g", "daemon off;"], stop_signal=signal.SIGQUIT)
        nginx.wait_until(_listening(port, d / name / "nginx.pid"), f"HTTPS on {HOST}:{port}")
    sock = d / "haproxy.sock"
    lb = estate.start("haproxy", ["haproxy", "-db", "-f", str(d / "haproxy.cfg")], cwd=d)
    lb.wait_until(lambda: tcp_open(p["edge_port"]) and "Name: HAProxy" in haproxy(sock, "show info"),
                  "edge port and runtime socket")
    out.haproxy_pid = lb.pid
    step(f"servers up: HAProxy https://{EDGE_NAME}:{p['edge_port']} (pid {lb.pid}) -> "
         f"nginx backend-1 {HOST}:{p['backend_1_port']}, backend-2 {HOST}:{p['backend_2_port']}")
    certd(layout, "deploy", "--all", why="the servers run now: deploy and verify each certificate")
    step(f"certd run   (the daemon, in the background; log: {d / 'logs' / 'certd-run.log'})")
    daemon = estate.start("certd-run", layout.certd_cmd("run"))
    daemon.wait_until(lambda: tcp_open(p["api_port"]), f"API on {HOST}:{p['api_port']}")
    tls = edge_tls(p["edge_port"], edge_ca)
    out.edge_tls = ", ".join(f"{v} {r}" for v, r in tls.items())
    if tls["1.1"] == "ok" or tls["1.2"] != "ok":
        raise DemoError(f"the edge must refuse TLS 1.1 and accept 1.2: {out.edge_tls}")
    step(f"edge TLS: {out.edge_tls}")
    step(f"traffic: {RATE:.0f} requests/s through HAProxy for {seconds:.0f} s while the daemon rotates all three "
         f"certificates (Ctrl-C stops early)")
    say(f"    try: curl --cacert {edge_ca} --resolve {EDGE_NAME}:{p['edge_port']}:{HOST} "
        f"-i https://{EDGE_NAME}:{p['edge_port']}/")
    watch = Watch(edge_port=p["edge_port"], backend_ports={n: p[port_key(n)] for n in BACKENDS},
                  sock=sock, edge_crt=d / "certs" / "edge" / "combined.pem", edge_ca=edge_ca,
                  backend_ca=d / "local-ca" / "root.pem")
    out.watch = watch
    watch.start()
    end = watch.t0 + seconds
    next_progress = watch.t0 + 15
    while (now := time.monotonic()) < end:
        if not daemon.alive():
            raise DemoError(f"certd run exited ({daemon.popen.returncode}); {daemon.log}:\n{tail(daemon.log)}")
        if now >= next_progress:
            say(f"    {now - watch.t0:6.1f}s  -- {watch.progress()}")
            next_progress += 15
        time.sleep(min(0.5, max(end - now, 0)))
    watch.stop()
    step("certd list   (the daemon still runs)")
    subprocess.run(layout.certd_cmd("list"), check=False, timeout=60)
    out.listed = True


def history(layout: Layout, name: str) -> dict[str, object]:
    proc = subprocess.run(layout.certd_cmd("history", name, "--json"), capture_output=True, text=True, timeout=60,
                          check=False)
    try:
        doc: dict[str, object] = json.loads(proc.stdout)
    except ValueError:
        return {}
    return doc


def renewal_failures(layout: Layout, name: str) -> int:
    events = history(layout, name).get("events")
    return sum(1 for e in events if isinstance(e, dict) and e.get("kind") == "renewal.failed") \
        if isinstance(events, list) else 0


def summarize(layout: Layout, out: Outcome, took: float) -> list[str]:
    """The five-second read, printed last; returns the problems (none: the demo passed)."""
    w, problems = out.watch, [out.error] if out.error else []
    lines = [f"==== certd demo: {f'{out.seconds:.0f} s of traffic' if w else 'stopped before any traffic'} "
             "through HAProxy; edge certificate from "
             + ("Pebble (ACME)" if layout.acme else "certd's local CA") + " ===="]
    if w is None:
        problems.append("it stopped before any traffic was sent")
    else:
        why = "; ".join(f"{n}x {r}" for r, n in w.reasons.most_common(3))
        lines.append(f"  requests   {w.sent} sent, {w.failed} failed" + (f": {why}" if why else "") +
                     f" (backend-1 answered {w.answered_by['backend-1']}, backend-2 {w.answered_by['backend-2']})")
        lines.append("  checked    HSTS, X-Forwarded-Proto, X-Request-ID on every answer; "
                     + ", ".join(f"{v} x{n}" for v, n in sorted(w.tls_versions.items()))
                     + "; the edge refuses TLS 1.1")
        if w.failed:
            problems.append(f"{w.failed} of {w.sent} requests failed")
        for name in CERTS:
            seen, failed = w.seen[name], renewal_failures(layout, name)
            how = "HAProxy runtime API" if name == "edge" else "nginx SIGHUP"
            lines.append(f"  {name:<10} {seen.rotations} rotation{'' if seen.rotations == 1 else 's'} ({how}); served "
                         + " ".join(short(s) for s in seen.serials)
                         + (f"; {failed} failed renewal attempts (certd history {name})" if failed else ""))
            if seen.rotations < 1:
                problems.append(f"{name} never rotated")
        pids = sorted(w.pids)
        if pids == [out.haproxy_pid] and out.haproxy_alive_at_end:
            lines.append(f"  haproxy    pid {out.haproxy_pid} unchanged: never reloaded or restarted")
        else:
            lines.append(f"  haproxy    pid {out.haproxy_pid} CHANGED or it died (runtime API saw {pids})")
            problems.append("HAProxy's pid changed or it died")
        fails = ", ".join(f"{n} {w.states.get(n, {}).get('chkfail', '?')}" for n in BACKENDS)
        downs = [w.states.get(n, {}).get("chkdown", "?") for n in BACKENDS]
        if w.polls and not w.not_up and downs == ["0", "0"]:
            lines.append(f"  backends   never down: both UP at all {w.polls} looks; failed health checks: {fails}")
        else:
            lines.append("  backends   NOT always up: " + ", ".join(f"{k} x{v}" for k, v in w.not_up.items())
                         + f"; failed health checks: {fails}")
            problems.append("a backend was not UP")
        if w.watch_errors:
            lines.append("  watching   " + "; ".join(f"{n}x {e}" for e, n in w.watch_errors.most_common(3)))
        if not out.daemon_alive_at_end and not out.interrupted:
            problems.append("certd run had exited before the end")
    if out.left_running:
        lines.append("  stopped    NOT everything: " + ", ".join(out.left_running))
        problems.append("processes left running")
    else:
        lines.append("  stopped    certd run, HAProxy, nginx x2" + (", Pebble" if layout.acme else "")
                     + ": nothing left running")
    verdict = "INTERRUPTED" if out.interrupted else "FAIL: " + "; ".join(problems) if problems else "PASS"
    lines.append(f"  result     {verdict} ({took:.0f} s in all; configs and logs in {layout.dir})")
    say("\n" + "\n".join(lines))
    (layout.dir / "summary.txt").write_text("\n".join(lines) + "\n")
    (layout.dir / "summary.json").write_text(json.dumps({
        "problems": problems, "interrupted": out.interrupted, "seconds": round(out.seconds, 1),
        "sent": w.sent if w else 0, "failed": w.failed if w else 0, "reasons": dict(w.reasons) if w else {},
        "served": {n: w.seen[n].serials for n in CERTS} if w else {},
        "haproxy_loaded": w.haproxy_loaded.serials if w else [], "haproxy_pid": out.haproxy_pid,
    }, indent=2) + "\n")
    return problems


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("DEMO_SECONDS") or 90))
    ap.add_argument("--edge", choices=["auto", "acme", "local-ca"], default=os.environ.get("DEMO_EDGE") or "auto")
    ap.add_argument("--dir", type=Path, default=REPO / "var" / "demo")
    ap.add_argument("--certd", type=Path, default=REPO / ".venv" / "bin" / "certd")
    args = ap.parse_args(argv)
    for tool in ("haproxy", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            say(f"{tool} not found: run scripts/install-system-deps.sh demo (apt-get install haproxy nginx-light)")
            return 2
    os.environ["PATH"] += os.pathsep + "/usr/sbin"
    has_pebble = bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))
    if args.edge == "acme" and not has_pebble:
        say("pebble not found: `apt-get install pebble`, or DEMO_EDGE=local-ca")
        return 2
    want_acme = args.edge == "acme" or (args.edge == "auto" and has_pebble)
    directory: Path = args.dir.resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    step(f"certd demo: HAProxy edge + two nginx backends, every certificate rotating under traffic "
         f"(files, logs, database: {directory})")
    if not want_acme:
        say("    " + ("pebble not found: the edge certificate comes from certd's local CA; "
                      "`apt-get install pebble` for ACME" if not has_pebble else
                      "DEMO_EDGE=local-ca: the edge certificate comes from certd's local CA"))
    layout = prepare(directory, args.certd, want_acme)
    estate = Estate(directory)
    out = Outcome()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = time.monotonic()
    try:
        run(estate, layout, args.seconds, out)
    except (KeyboardInterrupt, Interrupted) as exc:
        out.interrupted = True
        say(f"\n==> interrupted ({str(exc) or 'SIGINT'}): stopping everything")
    except DemoError as exc:
        out.error = str(exc)
        say(f"\n==> demo failed: {exc}")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        if out.watch is not None:
            out.seconds = out.watch.stop()
        alive = {p.name for p in estate.procs if p.alive()}
        out.haproxy_alive_at_end, out.daemon_alive_at_end = "haproxy" in alive, "certd-run" in alive
        step("stopping certd run, HAProxy, nginx" + (", Pebble" if layout.acme else ""))
        out.left_running = estate.stop_all()
    daemon = next((p for p in estate.procs if p.name == "certd-run"), None)
    if daemon is not None and daemon.returncode not in (0, None):
        say(f"    certd run exited {daemon.returncode} on SIGTERM; {daemon.log}:\n{tail(daemon.log, 5)}")
    if not out.listed and not out.interrupted and out.watch is not None:
        step("certd list")
        subprocess.run(layout.certd_cmd("list"), check=False, timeout=60)
    problems = summarize(layout, out, time.monotonic() - started)
    if out.interrupted:
        return 130
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
