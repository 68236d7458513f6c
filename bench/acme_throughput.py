"""ACME issuance throughput, certd against the raw `acme` library, certbot and lego, on one local Pebble.

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python bench/acme_throughput.py --count 50 --threads 16 \
        [--tools certd,raw,certbot,lego] [--certbot-count 5] [--lego-count 5] [--nonce-reject 5]

Every tool talks to the same Pebble in the same run, so the numbers compare clients rather than machines or
days. Validation is real HTTP-01 (Pebble fetches the token from whoever listens on its HTTP-01 port), so the
tools run one after another: each one owns that port during its phase. See bench/README.md for what is and is
not comparable. Results go to bench/results/acme_throughput.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from tests.servers.pebble import PebbleServer

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("certd", "raw", "raw-fastpoll", "certbot", "lego")
# raw-fastpoll's schedule: Pebble (VA_NOSLEEP) validates and issues in milliseconds, so `acme`'s fixed
# 1 s sleeps, not the protocol, set raw's latency; this shows what the protocol itself costs.
FAST_POLL_FIRST = 0.05
FAST_POLL_MAX = 1.0
DOMAIN = "bench.test"
ORDER_DEADLINE = dt.timedelta(seconds=60)
SUBPROCESS_TIMEOUT = 180.0
T = TypeVar("T")


@dataclass
class ToolResult:
    """One tool's phase; ``seconds`` is wall time for the timed part only (see the README for what is timed)."""

    tool: str
    attempted: int
    threads: int
    certificates: int = 0
    seconds: float = 0.0
    available: bool = True
    version: str = ""
    note: str = ""
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def certs_per_s(self) -> float | None:
        return self.certificates / self.seconds if self.available and self.seconds > 0 and self.certificates else None

    @property
    def per_cert_s(self) -> float | None:
        """Wall seconds per certificate (1 / throughput); for a sequential tool that is its latency too."""
        return self.seconds / self.certificates if self.available and self.certificates else None

    @property
    def mean_latency_s(self) -> float | None:
        return sum(self.latencies) / len(self.latencies) if self.latencies else None

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(certs_per_s=self.certs_per_s, per_cert_s=self.per_cert_s, mean_latency_s=self.mean_latency_s)
        doc["errors"] = self.errors[:20]
        return doc


# --- shared helpers -------------------------------------------------------------------------------------------


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def command_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def dpkg_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", package], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return " ".join(out.stdout.split()) or "?"


# --- raw `acme` ---------------------------------------------------------------------------------------------


def fast_poll_and_finalize(acme: Any, order: Any, deadline: dt.datetime) -> Any:
    """poll_and_finalize with a short, growing poll interval instead of `acme`'s fixed 1 s sleeps.

    Every request is retried on badNonce on its own, so a rejection never replays a finalize that went through.
    """
    from acme import errors, messages

    from tests.servers.raw_acme import retry_bad_nonce

    def until(fetch: Callable[[], T], done: Callable[[T], bool]) -> T:
        pause = FAST_POLL_FIRST
        while True:
            value = retry_bad_nonce(fetch)
            if done(value):
                return value
            if dt.datetime.now() >= deadline:
                raise errors.TimeoutError()
            time.sleep(pause)
            pause = min(pause * 2, FAST_POLL_MAX)

    for url in order.body.authorizations:

        def fetch_authz(url: str = url) -> Any:
            return acme._authzr_from_response(acme._post_as_get(url), uri=url)

        authz = until(fetch_authz, lambda a: a.body.status != messages.STATUS_PENDING)
        if authz.body.status != messages.STATUS_VALID:
            raise errors.ValidationError([authz])
    order = order.update(body=until(lambda: messages.Order.from_json(acme._post_as_get(order.uri).json()),
                                    lambda b: b.status != messages.STATUS_PENDING))  # fmt: skip
    try:
        retry_bad_nonce(lambda: acme.begin_finalization(order))
    except messages.Error as exc:
        if exc.code != "orderNotReady":
            raise
    body = until(
        lambda: messages.Order.from_json(acme._post_as_get(order.uri).json()),
        lambda b: b.status in (messages.STATUS_VALID, messages.STATUS_INVALID),
    )
    if body.status != messages.STATUS_VALID or body.certificate is None:
        raise errors.IssuanceError(body.error)
    fullchain = retry_bad_nonce(lambda: acme._post_as_get(body.certificate)).text
    return order.update(body=body, fullchain_pem=fullchain)


def bench_raw(pebble: PebbleServer, count: int, threads: int, fast_poll: bool = False) -> ToolResult:
    """The floor for any Python ACME client: the library alone, no database, no files, no deploy."""
    from acme import challenges, client, crypto_util, messages
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from josepy.jwa import ES256
    from josepy.jwk import JWKEC

    from tests.servers.raw_acme import Http01Responder, retry_bad_nonce  # on sys.path once main() ran

    tool = "raw-fastpoll" if fast_poll else "raw"
    result = ToolResult(tool, count, threads, version=f"acme {importlib.metadata.version('acme')}")
    result.note = "one account registered before timing; own ClientNetwork per thread; " + (
        f"own polling ({FAST_POLL_FIRST:g} s doubling to {FAST_POLL_MAX:g} s)"
        if fast_poll
        else "ClientV2.poll_and_finalize (fixed 1 s sleeps)"
    )
    ca = str(pebble.ca_bundle)
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))

    def network() -> Any:
        # Typed as bool in acme, but handed to requests' `verify`, which takes a CA bundle path.
        return client.ClientNetwork(key, alg=ES256, verify_ssl=ca, user_agent="certd-bench-raw")  # type: ignore[arg-type]

    net = network()
    directory = client.ClientV2.get_directory(pebble.directory_url, net)
    registrar = client.ClientV2(directory, net)
    reg = messages.NewRegistration.from_data(terms_of_service_agreed=True)
    regr = retry_bad_nonce(lambda: registrar.new_account(reg))


    responder = Http01Responder(pebble.http01_port)
    names: queue.Queue[str] = queue.Queue()
    for i in range(count):
        names.put(f"{'f' if fast_poll else 'b'}{i}.{DOMAIN}")
    lock = threading.Lock()

    def issue_one(acme: Any, name: str) -> None:
        leaf_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        csr_pem = crypto_util.make_csr(leaf_key, [name])
        order = retry_bad_nonce(lambda: acme.new_order(csr_pem))
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
            response, validation = chall.response_and_validation(key)
            responder.tokens[chall.chall.path] = validation
            retry_bad_nonce(functools.partial(acme.answer_challenge, chall, response))
        deadline = dt.datetime.now() + ORDER_DEADLINE
        if fast_poll:
            done = fast_poll_and_finalize(acme, order, deadline)
        else:
            done = retry_bad_nonce(lambda: acme.poll_and_finalize(order, deadline))
        if "BEGIN CERTIFICATE" not in (done.fullchain_pem or ""):
            raise RuntimeError(f"{name}: no certificate in the finalized order")

    def worker() -> None:
        thread_net = network()
        thread_net.account = regr
        acme = client.ClientV2(directory, thread_net)
        while True:
            try:
                name = names.get_nowait()
            except queue.Empty:
                return
            began = time.monotonic()
            try:
                issue_one(acme, name)
            except Exception as exc:
                with lock:
                    result.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            with lock:
                result.certificates += 1
                result.latencies.append(time.monotonic() - began)

    try:
        started = time.monotonic()
        pool = [threading.Thread(target=worker, name=f"raw-{i}") for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        result.seconds = time.monotonic() - started
    finally:
        responder.stop()
    return result


# --- certbot and lego: one process per certificate, sequentially -----------------------------------------------


def run_timed(argv: Sequence[str], env: dict[str, str]) -> tuple[bool, float, str]:
    began = time.monotonic()
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - began, f"timed out after {SUBPROCESS_TIMEOUT:.0f}s"
    except OSError as exc:
        return False, time.monotonic() - began, str(exc)
    return out.returncode == 0, time.monotonic() - began, tail(out.stdout + "\n" + out.stderr)


def sequential(result: ToolResult, argv_for: Callable[[str], list[str]], env: dict[str, str], prefix: str) -> None:
    """Only the issuing runs are timed; a failed run still costs its time, as it would in production."""
    for i in range(1, result.attempted + 1):
        name = f"{prefix}{i}.{DOMAIN}"
        ok, seconds, output = run_timed(argv_for(name), env)
        result.seconds += seconds
        if ok:
            result.certificates += 1
            result.latencies.append(seconds)
        else:
            result.errors.append(f"{name}: {output}")


def bench_certbot(pebble: PebbleServer, count: int, work: Path) -> ToolResult:
    result = ToolResult("certbot", count, 1, version=command_version(["certbot", "--version"]))
    if shutil.which("certbot") is None:
        result.available, result.note = False, "certbot not installed (apt-get install certbot)"
        return result
    dirs = ["--config-dir", str(work / "config"), "--work-dir", str(work / "work"), "--logs-dir", str(work / "logs")]
    common = ["--server", pebble.directory_url, "--non-interactive", *dirs]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)}
    reg = ["certbot", "register", "--agree-tos", "--register-unsafely-without-email", *common]
    ok, _, output = run_timed(reg, env)
    if not ok:
        result.available, result.note = False, f"certbot register failed: {output}"
        return result
    result.note = "account registered before timing (certbot register); one process per certificate"

    def argv(name: str) -> list[str]:
        return [
            "certbot", "certonly", "--standalone",
            "--http-01-port", str(pebble.http01_port), "--http-01-address", "127.0.0.1",
            "--agree-tos", "--register-unsafely-without-email", "-d", name, *common,
        ]  # fmt: skip

    sequential(result, argv, env, "certbot")
    return result


def bench_lego(pebble: PebbleServer, count: int, work: Path) -> ToolResult:
    result = ToolResult("lego", count, 1, version=command_version(["lego", "--version"]))
    if shutil.which("lego") is None:
        result.available, result.note = False, "lego not installed (apt-get install lego)"
        return result
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(pebble.ca_bundle)}

    def argv(name: str) -> list[str]:
        return [
            "lego", "--server", pebble.directory_url, "--accept-tos", "--email", "bench@example.test",
            "--http", "--http.port", f"127.0.0.1:{pebble.http01_port}", "--domains", name,
            "--path", str(work), "run",
        ]  # fmt: skip

    # lego has no register-only command: an untimed first issuance creates the account, as `certbot register` does.
    ok, _, output = run_timed(argv(f"lego0.{DOMAIN}"), env)
    if not ok:
        result.available, result.note = False, f"lego warm-up (account registration) failed: {output}"
        return result
    result.note = "account registered by an untimed warm-up issuance; one process per certificate"
    sequential(result, argv, env, "lego")
    return result


# --- certd ----------------------------------------------------------------------------------------------------


def certd_command() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "certd"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "certd"]


def toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_certd_config(pebble: PebbleServer, work: Path, count: int, threads: int) -> Path:
    """c0 is the warm-up certificate (account + database), c1..cN are the timed ones."""
    roots = work / "pebble-roots.pem"
    roots.write_bytes(pebble.roots_pem())
    big = 1_000_000  # certd's own Let's Encrypt-shaped budget would stop a bench at 50 per domain
    lines = [
        "[database]",
        f"url = {toml_str(f'sqlite:///{work}/certd.db')}",
        "",
        "[daemon]",
        f"workers = {threads}",
        "",
        "[issuers.pebble]",
        'type = "acme"',
        f"directory = {toml_str(pebble.directory_url)}",
        'email = "bench@example.test"',
        f"ca_bundle = {toml_str(pebble.ca_bundle)}",
        f"roots = {toml_str(roots)}",
        'challenge = "http-01"',
        f'http01_listen = "127.0.0.1:{pebble.http01_port}"',
        f"rate_limits = {{ certificates_per_domain = {big}, duplicate_certificates = {big}, new_orders = {big} }}",
    ]
    for i in range(count + 1):
        lines += [
            "",
            f"[certificates.c{i}]",
            'issuer = "pebble"',
            f'names = ["certd{i}.{DOMAIN}"]',
            f"output_dir = {toml_str(work / 'out' / f'c{i}')}",
        ]
    path = work / "certd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def certd_renew(config: Path, names: Sequence[str], timeout: float) -> tuple[int | None, float, dict[str, Any], str]:
    argv = [*certd_command(), "-c", str(config), "renew", *names, "--force", "--json"]
    began = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=config.parent)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return None, time.monotonic() - began, {}, f"timed out after {timeout:.0f}s: {tail(stderr)}"
    except OSError as exc:
        return None, time.monotonic() - began, {}, str(exc)
    seconds = time.monotonic() - began
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        doc = {}
    return out.returncode, seconds, doc, tail(out.stderr or out.stdout)


def bench_certd(pebble: PebbleServer, count: int, threads: int, work: Path) -> ToolResult:
    """One `certd renew` process for all certificates: the full pipeline (database, files, checks) per cert."""
    result = ToolResult("certd", count, threads, version=command_version([*certd_command(), "--version"]))
    try:
        config = write_certd_config(pebble, work, count, threads)
    except Exception as exc:
        result.available, result.note = False, f"could not write the config: {exc}"
        return result
    code, _, doc, err = certd_renew(config, ["c0"], SUBPROCESS_TIMEOUT)
    if code != 0:
        detail = "; ".join(f"{r.get('failed_step')}: {r.get('error')}" for r in doc.get("results", [])) or err
        result.available, result.note = False, f"not available: warm-up `certd renew c0` exit {code}: {detail}"
        return result
    names = [f"c{i}" for i in range(1, count + 1)]
    code, seconds, doc, err = certd_renew(config, names, SUBPROCESS_TIMEOUT + 5 * count)
    result.seconds = seconds
    results = doc.get("results", [])
    result.certificates = sum(1 for r in results if r.get("outcome") == "renewed")
    result.errors = [
        f"{r.get('name')}: {r.get('failed_step')}: {r.get('error')}" for r in results if r.get("outcome") == "failed"
    ]
    if not results:
        result.available, result.note = False, f"not available: `certd renew` exit {code}: {err}"
        return result
    result.note = (
        "warm-up `certd renew c0` (account, database) untimed; timed: one `certd renew c1..cN --force --json` "
        f"process, exit {code}"
    )
    return result


# --- report ---------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(meta: dict[str, Any], results: list[ToolResult]) -> str:
    rates = {r.tool: r.certs_per_s for r in results}

    def relative(rate: float | None, base: str, percent: bool) -> str:
        other = rates.get(base)
        if not rate or not other:
            return "-"
        return f"{100 * rate / other:.0f}%" if percent else f"{rate / other:.1f}x"

    lines = [
        "# ACME issuance throughput against one local Pebble",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['nproc']} cores ({meta['machine']}), Python {meta['python']}, load average at start "
        f"{' '.join(str(x) for x in meta['loadavg_at_start'])}",
        f"- Pebble: {meta['pebble']}; nonce rejection {meta['nonce_reject']}%; PEBBLE_AUTHZREUSE={meta['authz_reuse']}"
        "; PEBBLE_VA_NOSLEEP=1; validation real HTTP-01",
        "",
        "| tool | version | certificates | threads | seconds | certs/s | per-cert s | mean latency s "
        "| ratio vs certbot | % of raw | % of raw-fastpoll |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if not r.available:
            lines.append(f"| {r.tool} | {r.version} | not available | {r.threads} | - | - | - | - | - | - | - |")
            continue
        rate = r.certs_per_s
        lines.append(
            f"| {r.tool} | {r.version} | {r.certificates}/{r.attempted} | {r.threads} | {r.seconds:.2f} "
            f"| {fmt(rate)} | {fmt(r.per_cert_s)} | {fmt(r.mean_latency_s)} | {relative(rate, 'certbot', False)} "
            f"| {relative(rate, 'raw', True)} | {relative(rate, 'raw-fastpoll', True)} |"
        )
    if "certd" in rates:
        lines += ["", f"certd as % of raw: {relative(rates['certd'], 'raw', True)} "
                  f"(of raw-fastpoll: {relative(rates['certd'], 'raw-fastpoll', True)})"]  # fmt: skip
    lines += ["", "Notes:"]
    for r in results:
        lines.append(f"- {r.tool}: {r.note}" + (f"; {len(r.errors)} failed" if r.errors else ""))
        lines += [f"  - `{e[:300]}`" for e in r.errors[:5]]
    lines += [
        "",
        "per-cert s = seconds / certificates (inverse throughput); mean latency = one certificate from order to "
        "chain (raw: per order inside its thread; certbot/lego: per process). See bench/README.md.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=50, help="certificates for raw and certd")
    p.add_argument("--threads", type=int, default=16, help="raw threads and certd [daemon] workers")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, run in this order: {','.join(TOOLS)}")
    p.add_argument("--certbot-count", type=int, default=5)
    p.add_argument("--lego-count", type=int, default=5)
    p.add_argument("--nonce-reject", type=int, default=5, help="PEBBLE_WFE_NONCEREJECT percent (Pebble default 5)")
    p.add_argument(
        "--authz-reuse",
        type=int,
        default=0,
        help="PEBBLE_AUTHZREUSE percent (default 0: every certificate pays one real validation)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the .md and .json go")
    args = p.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if min(args.count, args.threads, args.certbot_count, args.lego_count) < 1:
        p.error("counts and threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # PebbleServer lives in the test tree
    from tests.servers.pebble import PebbleServer

    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", *argv]),
        "nproc": os.cpu_count(),
        "machine": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "pebble": dpkg_version("pebble"),
        # Other work on the same 2 cores moves these numbers more than anything in the clients: record it.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nonce_reject": args.nonce_reject,
        "authz_reuse": args.authz_reuse,
        "count": args.count,
        "threads": args.threads,
    }
    results: list[ToolResult] = []
    pebble = PebbleServer(nonce_reject=args.nonce_reject, extra_env={"PEBBLE_AUTHZREUSE": str(args.authz_reuse)})
    work = Path(tempfile.mkdtemp(prefix="certd-bench-"))
    try:
        for tool in args.tools:
            print(f"== {tool} ...", file=sys.stderr, flush=True)
            tool_dir = work / tool
            tool_dir.mkdir()
            if tool in ("raw", "raw-fastpoll"):
                r = bench_raw(pebble, args.count, args.threads, fast_poll=tool == "raw-fastpoll")
            elif tool == "certbot":
                r = bench_certbot(pebble, args.certbot_count, tool_dir)
            elif tool == "lego":
                r = bench_lego(pebble, args.lego_count, tool_dir)
            else:
                r = bench_certd(pebble, args.count, args.threads, tool_dir)
            results.append(r)
            status = f"{r.certificates}/{r.attempted} in {r.seconds:.2f}s" if r.available else r.note
            print(f"   {tool}: {status} ({fmt(r.certs_per_s)} certs/s)", file=sys.stderr, flush=True)
    finally:
        pebble.stop()
        shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(meta, results)
    (args.out / "acme_throughput.md").write_text(markdown)
    doc = {"meta": meta, "results": [r.as_json() for r in results]}
    (args.out / "acme_throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
