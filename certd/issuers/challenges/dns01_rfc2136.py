"""DNS-01 (RFC 8555 section 8.4) through RFC 2136 dynamic updates to the zone's primary server.

Why it is built this way:

* Only dnspython, talking to the one server the operator named: no provider
  SDKs, and no recursive resolver whose cache could lie about propagation.
* Records are *added*, never replaced: a wildcard and its apex share
  ``_acme-challenge.<name>``, and two concurrent orders may share it too, so
  every value must coexist; cleanup deletes exactly the values this call
  added and leaves the others alone.
* The zone is found by asking the server itself for the SOA of each enclosing
  name (cached per process), so one certd can serve several zones without
  configuring them.
* Cleanup must always run: while ``_acme-challenge.foo`` exists, ``foo`` is an
  empty non-terminal and the zone's wildcard no longer answers for it.
* The TSIG secret is held in a ``dns.tsig.Key`` and never formatted into any
  message or log line; errors name the key by its name only.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from certd.config.model import AcmeIssuerConfig
from certd.config.types import valid_port
from certd.errors import ConfigError, IssuerError
from certd.inputs import read_text
from certd.issuers.challenges.base import Challenge

__all__ = ["Rfc2136Dns01", "build_dns01", "read_tsig_secret"]

log = logging.getLogger("certd.issuers.challenges.dns01")

_T = TypeVar("_T")
# record name -> the TXT values wanted there
_Records = dict[dns.name.Name, set[str]]

TTL = 60
POLL_INTERVAL = 0.5
_REASON = "ChallengeFailed"
_REFUSED = {dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.BADSIG, dns.rcode.BADKEY, dns.rcode.BADTIME}

# (server, record name) -> zone; zones do not move while certd runs, and the walk costs a few round trips.
_zone_cache: dict[tuple[str, dns.name.Name], dns.name.Name] = {}
_zone_cache_lock = threading.Lock()


def record_name(domain: str) -> dns.name.Name:
    """``_acme-challenge.<domain>``; a wildcard's record is its base name's (RFC 8555 section 8.4)."""
    base = domain[2:] if domain.startswith("*.") else domain
    return dns.name.from_text(f"_acme-challenge.{base}")


def _txt(value: str) -> dns.rdtypes.ANY.TXT.TXT:
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode("ascii")])


def _split_server(server: str) -> tuple[str, int]:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not valid_port(port):
        raise ConfigError(f"dns_server {server!r} is not HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), int(port)


class Rfc2136Dns01:
    """DNS-01 by RFC 2136 updates to ``server`` (``host:port``), signed with TSIG when a key is given.

    ``tsig_secret`` is the base64 text exactly as in BIND's key file (``secret "...";``).
    ``propagation_timeout`` bounds the wait until the server answers every value; ``timeout`` bounds each
    DNS exchange.
    """

    challenge_type = "dns-01"

    def __init__(
        self,
        server: str,
        *,
        tsig_key_name: str | None = None,
        tsig_secret: str | None = None,
        tsig_algorithm: str = "hmac-sha256",
        propagation_timeout: float = 60,
        timeout: float = 10,
    ) -> None:
        self.server = server
        self._host, self._port = _split_server(server)
        self.tsig_key_name = tsig_key_name
        self.propagation_timeout = propagation_timeout
        self.timeout = timeout
        self._key = _make_key(tsig_key_name, tsig_secret, tsig_algorithm)

    def __repr__(self) -> str:
        return f"Rfc2136Dns01(server={self.server!r}, tsig_key_name={self.tsig_key_name!r})"

    # -- the ChallengeSolver protocol ----------------------------------------------------------------------

    def present(self, challenges: Sequence[Challenge]) -> None:
        wanted = _values_by_name(challenges)
        if not wanted:
            return
        by_zone = self._group_by_zone(wanted)
        for zone, records in by_zone.items():
            self._update(zone, records, add=True)
        self._wait_visible(wanted)

    def cleanup(self, challenges: Sequence[Challenge]) -> None:
        for zone, records in self._zones_for_cleanup(_values_by_name(challenges)).items():
            try:
                self._update(zone, records, add=False)
            except Exception as exc:
                names = ", ".join(sorted(n.to_text(True) for n in records))
                log.warning("dns-01 cleanup of %s on %s failed: %s", names, self.server, exc)

    # -- steps ----------------------------------------------------------------------------------------------

    def _group_by_zone(self, wanted: _Records) -> dict[dns.name.Name, _Records]:
        """All zones first, so a name outside every zone fails before anything was written."""
        by_zone: dict[dns.name.Name, _Records] = defaultdict(dict)
        for name, values in wanted.items():
            by_zone[self._zone_for(name)][name] = values
        return by_zone

    def _zones_for_cleanup(self, wanted: _Records) -> dict[dns.name.Name, _Records]:
        """Like _group_by_zone, but a name whose zone cannot be found is logged and skipped, not fatal."""
        by_zone: dict[dns.name.Name, _Records] = defaultdict(dict)
        for name, values in wanted.items():
            try:
                by_zone[self._zone_for(name)][name] = values
            except Exception as exc:
                log.warning("dns-01 cleanup of %s on %s failed: %s", name.to_text(True), self.server, exc)
        return by_zone

    def _zone_for(self, name: dns.name.Name) -> dns.name.Name:
        key = (self.server, name)
        with _zone_cache_lock:
            cached = _zone_cache.get(key)
        if cached is not None:
            return cached
        zone = self._find_zone(name)
        with _zone_cache_lock:
            _zone_cache[key] = zone
        return zone

    def _find_zone(self, name: dns.name.Name) -> dns.name.Name:
        """The closest enclosing name the server answers an authoritative SOA for."""
        candidate = name
        while candidate != dns.name.root:
            reply = self._query(candidate, dns.rdatatype.SOA)
            if _is_zone_apex(reply, candidate):
                return candidate
            candidate = candidate.parent()
        raise IssuerError(
            f"DNS-01: {self.server} is not authoritative for any zone containing {name.to_text(True)}; "
            "check dns_server and the certificate's names",
            reason=_REASON,
        )

    def _update(self, zone: dns.name.Name, records: dict[dns.name.Name, set[str]], *, add: bool) -> None:
        update = dns.update.UpdateMessage(zone)
        if self._key is not None:
            update.use_tsig(self._key)
        for name, values in records.items():
            for value in sorted(values):
                if add:
                    update.add(name, TTL, _txt(value))
                else:
                    update.delete(name, _txt(value))
        reply = self._exchange(update, what=f"update of zone {zone.to_text(True)}", zone=zone)
        rcode = reply.rcode()
        if rcode in _REFUSED:
            raise self._refused(zone, dns.rcode.to_text(rcode))
        if rcode != dns.rcode.NOERROR:
            raise IssuerError(
                f"DNS-01: {self.server} answered {dns.rcode.to_text(rcode)} to the update of zone "
                f"{zone.to_text(True)}",
                reason=_REASON,
                retryable=rcode == dns.rcode.SERVFAIL,
            )
        count = sum(len(values) for values in records.values())
        log.debug("dns-01 %s %d TXT value(s) in zone %s", "added" if add else "deleted", count, zone)

    def _wait_visible(self, wanted: dict[dns.name.Name, set[str]]) -> None:
        """Return once the server answers every value, because only then may the CA be told to look."""
        deadline = time.monotonic() + self.propagation_timeout
        pending = dict(wanted)
        while True:
            pending = {name: values for name, values in pending.items() if not values <= self._txt_values(name)}
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(sorted(n.to_text(True) for n in pending))
                raise IssuerError(
                    f"DNS-01: {self.server} did not answer the new TXT values for {names} within "
                    f"{self.propagation_timeout:g}s (dns_propagation_timeout)",
                    reason=_REASON,
                    retryable=True,
                )
            time.sleep(POLL_INTERVAL)

    def _txt_values(self, name: dns.name.Name) -> set[str]:
        reply = self._query(name, dns.rdatatype.TXT)
        rrset = reply.get_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.TXT)
        if rrset is None:
            return set()
        return {b"".join(rdata.strings).decode("ascii", "replace") for rdata in rrset}

    # -- transport -------------------------------------------------------------------------------------------

    def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        reply, _ = self._guard(
            lambda address: dns.query.udp_with_fallback(query, address, port=self._port, timeout=self.timeout),
            what=f"{dns.rdatatype.to_text(rdtype)} query for {name.to_text(True)}",
        )
        return reply

    def _exchange(self, update: dns.update.UpdateMessage, *, what: str, zone: dns.name.Name) -> dns.message.Message:
        """Updates go over TCP: they may be large, and a lost UDP reply would leave us unsure what happened."""
        return self._guard(
            lambda address: dns.query.tcp(update, address, port=self._port, timeout=self.timeout), what=what, zone=zone
        )

    def _guard(self, send: Callable[[str], _T], *, what: str, zone: dns.name.Name | None = None) -> _T:
        """The one place where dnspython's and the socket's exceptions become IssuerError."""
        address = self._address()
        try:
            return send(address)
        except dns.tsig.PeerError as exc:
            if zone is not None:
                raise self._refused(zone, _tsig_code(exc)) from exc
            raise IssuerError(f"DNS-01: {what} to {self.server} failed: {_tsig_code(exc)}", reason=_REASON) from exc
        except (dns.exception.Timeout, OSError, EOFError) as exc:
            raise IssuerError(
                f"DNS-01: {what} to {self.server} failed: {_describe(exc)}", reason=_REASON, retryable=True
            ) from exc
        except dns.exception.DNSException as exc:
            raise IssuerError(
                f"DNS-01: {what} to {self.server} failed: {type(exc).__name__}", reason=_REASON, retryable=True
            ) from exc

    def _address(self) -> str:
        """dnspython needs an IP literal; a host name in dns_server is resolved at each use."""
        try:
            ipaddress.ip_address(self._host)
            return self._host
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise IssuerError(
                f"DNS-01: cannot resolve dns_server {self.server}: {exc}", reason=_REASON, retryable=True
            ) from exc
        return str(infos[0][4][0])

    def _refused(self, zone: dns.name.Name, code: str) -> IssuerError:
        key = f"TSIG key {self.tsig_key_name!r}" if self.tsig_key_name else "an unsigned update (no TSIG key set)"
        return IssuerError(
            f"DNS-01: {self.server} refused {key} for zone {zone.to_text(True)} ({code}): the key is wrong or "
            "not authorised to update this zone (check tsig_key_name, tsig_secret_file, tsig_algorithm and the "
            "zone's allow-update / update-policy)",
            reason=_REASON,
        )


# -- helpers -------------------------------------------------------------------------------------------------


def _values_by_name(challenges: Sequence[Challenge]) -> dict[dns.name.Name, set[str]]:
    """Wildcard and apex land on the same name; their values must be sent as one rrset of several."""
    wanted: dict[dns.name.Name, set[str]] = defaultdict(set)
    for ch in challenges:
        wanted[record_name(ch.domain)].add(ch.validation)
    return dict(wanted)


def _is_zone_apex(reply: dns.message.Message, name: dns.name.Name) -> bool:
    if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
        return False
    return reply.get_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.SOA) is not None


def _tsig_code(exc: dns.tsig.PeerError) -> str:
    return {
        dns.tsig.PeerBadKey: "BADKEY",
        dns.tsig.PeerBadSignature: "BADSIG",
        dns.tsig.PeerBadTime: "BADTIME",
        dns.tsig.PeerBadTruncation: "BADTRUNC",
    }.get(type(exc), "TSIG error")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, EOFError):
        return "connection closed by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _make_key(name: str | None, secret: str | None, algorithm: str) -> dns.tsig.Key | None:
    """Validate the key up front, so a bad secret is a config error at start, not a failed order later."""
    if name is None and secret is None:
        return None
    if not name or not secret:
        raise ConfigError("DNS-01: tsig_key_name and the TSIG secret go together")
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"DNS-01: the secret of TSIG key {name!r} is not valid base64") from None
    try:
        return dns.tsig.Key(name, secret, algorithm)
    except dns.exception.DNSException:
        raise ConfigError(f"DNS-01: TSIG algorithm {algorithm!r} of key {name!r} is not supported") from None


_KEY_FILE_SECRET = re.compile(r'\bsecret\s+"([^"]+)"\s*;')
_KEY_FILE_ALGORITHM = re.compile(r"\balgorithm\s+\"?([A-Za-z0-9.-]+)\"?\s*;")
_KEY_FILE_NAME = re.compile(r'\bkey\s+"?([^"\s{]+)"?\s*\{')


def read_tsig_secret(path: Path) -> tuple[str, str | None, str | None]:
    """(secret, key name, algorithm) from a BIND key file, or (secret, None, None) from a bare base64 secret.

    Both forms exist in the wild: ``tsig-keygen`` writes the former, and secret stores hand out the latter.
    """
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read tsig_secret_file: {getattr(exc, 'strerror', None) or exc}") from None
    match = _KEY_FILE_SECRET.search(text)
    if match is None:
        secret = "".join(text.split())
        if not secret:
            raise ConfigError(f"{path}: tsig_secret_file is empty")
        return secret, None, None
    name = _KEY_FILE_NAME.search(text)
    algorithm = _KEY_FILE_ALGORITHM.search(text)
    return match.group(1), name.group(1) if name else None, algorithm.group(1) if algorithm else None


def build_dns01(config: AcmeIssuerConfig) -> Rfc2136Dns01:
    """The solver for an issuer with ``challenge = "dns-01"``.

    When the key file states an algorithm, it wins over ``tsig_algorithm``: it is what the server was given.
    A key file naming another key than ``tsig_key_name`` is refused, because the server would refuse it too.
    """
    if not config.dns_server:
        raise ConfigError("DNS-01 needs dns_server (the zone's primary, HOST:PORT)")
    secret: str | None = None
    algorithm = config.tsig_algorithm
    if config.tsig_secret_file is not None:
        secret, file_name, file_algorithm = read_tsig_secret(config.tsig_secret_file)
        if file_name and config.tsig_key_name and file_name.rstrip(".") != config.tsig_key_name.rstrip("."):
            raise ConfigError(
                f"{config.tsig_secret_file}: holds key {file_name!r} but tsig_key_name is {config.tsig_key_name!r}"
            )
        algorithm = file_algorithm or algorithm
    return Rfc2136Dns01(
        config.dns_server,
        tsig_key_name=config.tsig_key_name,
        tsig_secret=secret,
        tsig_algorithm=algorithm,
        propagation_timeout=config.dns_propagation_timeout.total_seconds(),
        timeout=config.timeout.total_seconds(),
    )
