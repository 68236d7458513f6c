"""Server and bind keywords of a haproxy.cfg, merged as HAProxy merges them, with the line each came from.

A keyword's arguments are the words after it, and how many it takes decides
which word is the next keyword: ``agent-addr verify`` gives ``agent-addr``
the address ``verify``. So the tables list HAProxy 2.6's server and bind
keywords (configuration.txt 5.1 and 5.2) by how many words they take. A
keyword the audit does not know, followed by one it judges (``foo verify
none``), cannot be read with certainty: it is a ``Doubt`` (UNKNOWN), not a
guess. A judged keyword without its argument, or a ``verify`` that is neither
``none`` nor ``required`` (HAProxy compares case-sensitively), makes HAProxy
refuse the file.

``default-server`` lines apply to the ``server`` lines after them in their
section, after those of the defaults section the proxy takes; ``no-<flag>``
removes a flag, ``no-verifyhost`` and ``no-ssl`` included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from certd.lb.audit.findings import Code, Doubt, Finding
from certd.lb.audit.haproxy_read import Line

__all__ = ["JUDGED", "Options"]

# Keywords that take one word (server and bind lines of HAProxy 2.6, and a few of later versions).
_WITH_ARG = frozenset({
    "verify", "ca-file", "crl-file", "sni", "verifyhost", "check-sni", "port", "addr", "ssl-min-ver", "ssl-max-ver",
    "crt", "crt-list", "alpn", "check-alpn", "check-proto", "npn", "inter", "fastinter", "downinter", "rise", "fall",
    "weight", "maxconn", "minconn", "maxqueue", "cookie", "id", "resolvers", "resolve-prefer", "resolve-opts",
    "resolve-net", "init-addr", "ciphers", "ciphersuites", "curves", "ecdhe", "on-error", "on-marked-down",
    "on-marked-up", "agent-port", "agent-inter", "agent-send", "agent-addr", "slowstart", "source", "track", "proto",
    "pool-low-conn", "pool-max-conn", "pool-purge-delay", "max-reuse", "observe", "error-limit", "redir",
    "namespace", "usesrc", "interface", "process", "name", "nice", "tcp-ut", "ws", "socks4", "log-proto",
    "proxy-v2-options", "set-proxy-v2-tlv-fmt", "sigalgs", "client-sigalgs", "mode", "user", "group", "level",
    "severity-output", "expose-fd", "accept-netscaler-cip", "backlog", "mss", "thread", "ca-verify-file",
    "ca-ignore-err", "crt-ignore-err", "ca-sign-file", "ca-sign-pass", "gid", "uid", "label", "hash-key", "shard",
    "guid", "quic-cc-algo", "nbconn", "idle-ping", "tcp-md5sig", "ocsp-update",
})
_FLAGS = frozenset({
    "ssl", "check", "check-ssl", "backup", "send-proxy", "send-proxy-v2", "send-proxy-v2-ssl", "send-proxy-v2-ssl-cn",
    "disabled", "enabled", "agent-check", "check-send-proxy", "check-via-socks4", "non-stick", "stick", "tfo",
    "allow-0rtt", "ssl-reuse", "tls-tickets", "force-sslv3", "force-tlsv10", "force-tlsv11", "force-tlsv12",
    "force-tlsv13", "no-sslv3", "no-tlsv10", "no-tlsv11", "no-tlsv12", "no-tlsv13", "strict-sni",
    "prefer-client-ciphers", "generate-certificates", "transparent", "v4v6", "v6only", "defer-accept",
    "accept-proxy", "quic-force-retry", "no-ca-names", "no-alpn",
})
# What the audit judges: a word of these right after a keyword it does not know might be that keyword's argument.
JUDGED = frozenset({
    "ssl", "verify", "ca-file", "sni", "verifyhost", "check", "check-ssl", "check-sni", "port", "addr", "crt",
    "no-ssl", "no-verifyhost", "no-check", "no-check-ssl", "ssl-min-ver", "force-sslv3", "force-tlsv10",
    "force-tlsv11", "no-tlsv10", "no-tlsv11",
})
_NEEDS_ARG = frozenset({"verify", "ca-file", "sni", "verifyhost", "check-sni", "port", "addr", "crt", "ssl-min-ver"})


@dataclass
class Options:
    """Keywords in force for one server or bind line: value (None for a flag), and the line that set each."""

    values: dict[str, str | None] = field(default_factory=dict)
    negated: set[str] = field(default_factory=set)
    source: dict[str, Line] = field(default_factory=dict)
    doubts: list[Doubt] = field(default_factory=list)
    refused: list[Finding] = field(default_factory=list)

    def copy(self) -> Options:
        return Options(dict(self.values), set(self.negated), dict(self.source), list(self.doubts),
                       list(self.refused))

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def apply(self, line: Line, start: int, server: bool = True) -> None:
        """The keywords of ``line.words[start:]`` over what is already in force (later ones win)."""
        words = line.words
        self.doubts += line.doubts
        # With a variable, words are not what HAProxy gets (``${V[*]}`` may be several): no refusal is claimed.
        judged = not any(d.code is Code.ENVIRONMENT for d in line.doubts)
        i = start
        while i < len(words):
            w = words[i]
            nxt = words[i + 1] if i + 1 < len(words) else None
            if w in _WITH_ARG or w.startswith("set-proxy-v2-tlv-fmt("):
                if nxt is None:
                    if w in _NEEDS_ARG and judged:
                        self._refuse(line, f"`{w}` without its argument")
                    break
                if server and judged and w == "verify" and nxt not in ("none", "required"):
                    self._refuse(line, f"`verify {nxt}`: HAProxy knows only `none` and `required`")
                self._set(line, w, nxt)
                i += 2
                continue
            if w.startswith("no-") and w not in _FLAGS:
                self.values.pop(w[3:], None)
                self.source[w[3:]] = line
                self.negated.add(w[3:])
            elif w in _FLAGS or nxt is None or nxt in _FLAGS or nxt in _WITH_ARG:
                if w not in _FLAGS and nxt in JUDGED and judged:
                    self.doubts.append(Doubt(line.no, Code.AMBIGUOUS, f"`{w}` is not a keyword the audit knows: "
                                             f"if it takes an argument, that is `{nxt}`, which then is not a keyword"))
                self._set(line, w, None)
                self.negated.discard(w)
            else:  # a keyword the audit does not know, followed by what can only be its value
                self._set(line, w, nxt)
                i += 1
            i += 1

    def _set(self, line: Line, key: str, value: str | None) -> None:
        self.values[key] = value
        self.source[key] = line

    def _refuse(self, line: Line, why: str) -> None:
        self.refused.append(Finding(line.no, Code.CONFIG_REFUSED, f"HAProxy refuses this line: {why}"))
