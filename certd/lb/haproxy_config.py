"""``certd haproxy-config``: the HAProxy lines of the re-encrypting setup, written from certd's config.

The rule for what goes where, so the lines need nothing but the config and
the command line:

- an **edge** certificate (``--edge NAME``) is served to clients: its
  ``output_dir/combined.pem`` goes on the one ``bind`` line, as the ``crt``
  HAProxy loads and certd's ``haproxy`` deploy target rotates;
- a **backend** certificate (``--backend NAME=HOST:PORT``) is what the
  backend at that address serves: it becomes a ``server`` line named after
  the certificate, whose server name (``sni``, ``verifyhost``, ``check-sni``)
  is the certificate's first DNS name that is not a wildcard, and whose
  ``ca-file`` is its issuer's ``bundle_file`` - the file certd keeps current
  with exactly the CA certificates to pin (``certd bundle``), never the
  system store.

Everything else is the same for every estate, and is what ``audit-lb``
checks: TLS >= 1.2 at the edge, HSTS, ``X-Forwarded-Proto`` and
``X-Request-ID`` set by the load balancer, HTTPS health checks on
``/healthz`` with SNI. Pure: it reads the config it is given and writes
nothing, so the same lines come out on every run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certd.config.model import Config
from certd.config.types import valid_port
from certd.errors import ConfigError
from certd.lb.audit.findings import is_ip

__all__ = ["FRONTEND", "HSTS", "POOL", "HaproxyLines", "ServerLine", "haproxy_lines"]

FRONTEND = "edge"
POOL = "backends"
HSTS = "max-age=63072000"  # two years, as hstspreload.org asks; no includeSubDomains: the estate's call, not ours


@dataclass(frozen=True)
class ServerLine:
    """One backend: the certificate it serves, where it listens, the name checked, the bundle pinned."""

    name: str
    address: str
    server_name: str
    ca_file: Path
    client_crt: Path | None = None  # HAProxy's client certificate: also what lets a new ca-file apply live

    @property
    def line(self) -> str:
        n = self.server_name
        crt = f" crt {self.client_crt}" if self.client_crt else ""
        return (f"server {self.name} {self.address} ssl verify required ca-file {self.ca_file}{crt} sni str({n}) "
                f"verifyhost {n} check check-ssl check-sni {n}")


@dataclass(frozen=True)
class HaproxyLines:
    """The frontend and backend sections, as lines; ``text`` is the snippet, ``as_json`` the same as data."""

    config: Path
    edges: tuple[str, ...]
    crts: tuple[Path, ...]
    bind: str
    servers: tuple[ServerLine, ...]

    @property
    def bind_line(self) -> str:
        crts = " ".join(f"crt {p}" for p in self.crts)
        return f"bind {self.bind} ssl {crts} ssl-min-ver TLSv1.2 alpn h2,http/1.1"

    @property
    def frontend(self) -> list[str]:
        if not self.crts:
            return []
        lines = [
            f"frontend {FRONTEND}",
            "mode http",
            self.bind_line,
            f'http-response set-header Strict-Transport-Security "{HSTS}"',
            "http-request set-header X-Forwarded-Proto https",
            "unique-id-format %[uuid()]",
            "http-request set-header X-Request-ID %[unique-id]",
            "http-response set-header X-Request-ID %[unique-id]",
            "option forwardfor",
        ]
        return lines + ([f"default_backend {POOL}"] if self.servers else [])

    @property
    def backend(self) -> list[str]:
        if not self.servers:
            return []
        return [f"backend {POOL}", "mode http", "option httpchk GET /healthz", "http-check expect status 200",
                *(s.line for s in self.servers)]

    def text(self) -> str:
        what = "; ".join(part for part in (
            f"edge: {', '.join(self.edges)}" if self.edges else "",
            f"backends: {', '.join(s.name for s in self.servers)}" if self.servers else "") if part)
        head = [f"# certd haproxy-config from {self.config} ({what}).",
                "# Paste next to your global and defaults sections, or load it as one more `haproxy -f` file;",
                "# check it with `certd audit-lb`. See docs/load-balancer.md."]
        blocks = ["\n".join([section[0], *(f"    {ln}" for ln in section[1:])])
                  for section in (self.frontend, self.backend) if section]
        return "\n".join(head) + "\n\n" + "\n\n".join(blocks) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "config": str(self.config),
            "frontend": {"name": FRONTEND, "certificates": list(self.edges), "crt": [str(p) for p in self.crts],
                         "bind": self.bind_line if self.crts else None, "lines": self.frontend[1:]}
            if self.crts else None,
            "backend": {"name": POOL, "lines": self.backend[1:],
                        "servers": [{"name": s.name, "certificate": s.name, "address": s.address,
                                     "server_name": s.server_name, "ca_file": str(s.ca_file),
                                     "crt": str(s.client_crt) if s.client_crt else None, "line": s.line}
                                    for s in self.servers]}
            if self.servers else None,
            "snippet": self.text(),
        }


# What may become one word of a generated line. HAProxy splits a line on whitespace, starts a comment at ``#``,
# and gives quotes, backslashes and ``$`` (environment variables) meanings of their own: a value holding any of
# them (or a control character) could add a line, a keyword or a comment — `b1=127.0.0.1:9443\n server evil`,
# `--bind '#'`, a bundle_file "/x/ca.pem verify none". So each value is checked for what it is, and refused
# naming where it came from, never quoted into something HAProxy might read differently.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?:\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)"
_ADDRESS = re.compile(rf"{_HOST}:([0-9]{{1,5}})")
_BIND = re.compile(rf"(?:{_HOST}|\*)?:([0-9]{{1,5}})")
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_UNSAFE = re.compile(r"[\s#'\"\\$]|[\x00-\x1f\x7f]")


def _port_ok(match: re.Match[str] | None) -> bool:
    return match is not None and valid_port(match.group(1))


def _host_port(value: str) -> bool:
    return _port_ok(_ADDRESS.fullmatch(value))


def _word(value: Path | str, where: str) -> str:
    """``value`` as one word of a HAProxy line, or ``ConfigError`` naming ``where`` it came from."""
    text = str(value)
    bad = _UNSAFE.search(text)
    if bad is not None:
        raise ConfigError(f"{where}: {text!r} holds {bad.group(0)!r}, which HAProxy reads as syntax (whitespace, "
                          "#, a quote, a backslash, $ or a control character): it would change the generated line; "
                          "use a path or value without it")
    return text


def _server_name(config: Config, name: str) -> str:
    names = config.certificates[name].names
    usable = [n for n in names if not is_ip(n) and not n.startswith("*.") and _DNS_NAME.fullmatch(n)]
    if not usable:
        raise ConfigError(f"{config.path}: certificates.{name}: names ({', '.join(names)}) hold no DNS name to send "
                          "as SNI and check (IP addresses cannot be SNI; a wildcard is not a host): add one")
    return usable[0]


def _known(config: Config, name: str, option: str) -> None:
    if name not in config.certificates:
        raise ConfigError(f"{option} {name}: {config.path} has no certificate named {name} (known: "
                          f"{', '.join(config.certificates) or 'none'})")


def haproxy_lines(config: Config, edges: list[str], backends: list[tuple[str, str]], *,
                  bind: str = ":443", client_cert: str | None = None) -> HaproxyLines:
    """The lines for ``edges`` (certificate names) and ``backends`` ((certificate name, HOST:PORT)).

    Raises ``ConfigError`` for an unknown certificate, an address that is not HOST:PORT, a backend whose
    issuer has no ``bundle_file`` (with the fix), or one without a DNS name.
    """
    if not edges and not backends:
        raise ConfigError("give --edge NAME and/or --backend NAME=HOST:PORT")
    if not _port_ok(_BIND.fullmatch(bind)):
        raise ConfigError(f"--bind {bind!r}: not [HOST]:PORT (e.g. :443, 192.0.2.1:443, [::]:443)")
    for name in edges:
        _known(config, name, "--edge")
    client_crt = None
    if client_cert is not None:
        _known(config, client_cert, "--client-cert")
        client_crt = config.certificates[client_cert].output_dir / "combined.pem"
        _word(client_crt, f"{config.path}: certificates.{client_cert}.output_dir")
    servers: list[ServerLine] = []
    for name, address in backends:
        _known(config, name, "--backend")
        if not _host_port(address):
            raise ConfigError(f"--backend {name}={address}: {address!r} is not HOST:PORT")
        issuer = config.certificates[name].issuer
        bundle = config.issuers[issuer].bundle_file
        if bundle is None:
            raise ConfigError(
                f"--backend {name}: its issuer {issuer} has no bundle_file, so there is no CA file for HAProxy to pin. "
                f"Set bundle_file = \"/etc/haproxy/certd/{issuer}-ca.pem\" under [issuers.{issuer}]: certd keeps it "
                f"current on every renewal (write it now with `certd bundle {name} --out <that path>`)")
        _word(bundle, f"{config.path}: issuers.{issuer}.bundle_file")
        servers.append(ServerLine(name, address, _server_name(config, name), bundle, client_crt))
    if len({s.name for s in servers}) != len(servers):
        raise ConfigError("--backend: each certificate once (a server line is named after its certificate)")
    crts = tuple(config.certificates[n].output_dir / "combined.pem" for n in dict.fromkeys(edges))
    for name, crt in zip(dict.fromkeys(edges), crts, strict=True):
        _word(crt, f"{config.path}: certificates.{name}.output_dir")
    return HaproxyLines(config.path, tuple(dict.fromkeys(edges)), crts, bind, tuple(servers))
