"""``audit-lb`` for haproxy.cfg: sections and keywords, line by line, then the pitfalls of each proxy.

HAProxy's syntax is one statement per line, words split on blanks, with
quotes, backslash escapes and ``#`` comments; a line whose first word is a
section keyword opens a section. That is all this reads: no includes, no
environment variables, no conditions. A proxy inherits from the last
``defaults`` section before it (as HAProxy does for anonymous defaults), and
a ``server`` from the ``default-server`` lines of its defaults and its own
section; ``no-<flag>`` removes a flag, as on a server line.

What HAProxy 2.6 itself does, which the checks follow (each tried against
the Debian build): ``verify`` defaults to ``required`` unless the global
``ssl-server-verify none``; ``verify required`` without ``ca-file`` is a
fatal config error; ``sni`` alone also makes HAProxy check the name; health
checks of an ``ssl`` server use TLS too, unless ``port`` or ``addr`` sends
them elsewhere (then in clear text, without ``check-ssl``); checks never send
SNI without ``check-sni``; the default minimum TLS version of a bind is 1.2
from HAProxy 2.2 on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from certd.lb.audit.findings import (
    MAX_PINNED,
    OLD_TLS,
    SYSTEM_CA,
    Audit,
    Code,
    Finding,
    TlsBackend,
    count_certificates,
    unreadable,
)

__all__ = ["audit_haproxy", "haproxy_score"]

SECTIONS = frozenset({
    "global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist", "mailers",
    "program", "http-errors", "ring", "cache", "crt-store", "traces",
})
_PROXIES = frozenset({"frontend", "backend", "listen"})
# Server/bind keywords that take one argument; everything else certd reads is a flag.
_WITH_ARG = frozenset({
    "verify", "ca-file", "crl-file", "sni", "verifyhost", "check-sni", "port", "addr", "ssl-min-ver", "ssl-max-ver",
    "crt", "crt-list", "alpn", "check-alpn", "npn", "inter", "fastinter", "downinter", "rise", "fall", "weight",
    "maxconn", "minconn", "maxqueue", "cookie", "id", "resolvers", "resolve-prefer", "init-addr", "ciphers",
    "ciphersuites", "curves", "ecdhe", "on-error", "on-marked-down", "on-marked-up", "agent-port", "agent-inter",
    "agent-send", "slowstart", "source", "track", "proto", "pool-max-conn", "pool-purge-delay", "max-reuse",
    "observe", "error-limit", "redir", "namespace", "usesrc", "interface", "process", "name", "nice",
    "tcp-ut", "ws", "socks4", "log-proto", "set-proxy-v2-tlv-fmt", "sigalgs", "client-sigalgs", "mode", "user",
    "group", "level", "severity-output", "expose-fd", "accept-netscaler-cip", "backlog", "mss", "thread",
    "ca-verify-file", "ca-ignore-err", "crt-ignore-err",
})
_FLAGS = frozenset({
    "ssl", "check", "check-ssl", "backup", "send-proxy", "send-proxy-v2", "send-proxy-v2-ssl", "disabled",
    "enabled", "agent-check", "check-send-proxy", "non-stick", "tfo", "allow-0rtt", "ssl-reuse", "tls-tickets",
    "force-sslv3", "force-tlsv10", "force-tlsv11", "force-tlsv12", "force-tlsv13", "no-sslv3", "no-tlsv10",
    "no-tlsv11", "no-tlsv12", "no-tlsv13", "strict-sni", "prefer-client-ciphers", "generate-certificates",
    "transparent", "v4v6", "v6only", "defer-accept", "accept-proxy", "quic-force-retry",
})


@dataclass
class _Line:
    no: int
    words: list[str]


@dataclass
class _Section:
    kind: str
    name: str
    no: int
    body: list[_Line] = field(default_factory=list)
    defaults: _Section | None = None

    def lines(self, first: str) -> list[_Line]:
        return [ln for ln in self.body if ln.words[0] == first]

    def where(self) -> str:
        return f"{self.kind} {self.name}".strip()


def _words(line: str) -> list[str]:
    """HAProxy's word splitting: blanks separate, quotes group, backslash escapes, ``#`` ends the line."""
    words: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    started = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quote != "'" and i + 1 < len(line):
            cur.append(line[i + 1])
            started, i = True, i + 2
            continue
        if quote:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch in "\"'":
            quote, started = ch, True
        elif ch == "#":
            break
        elif ch.isspace():
            if started:
                words.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
        i += 1
    if started:
        words.append("".join(cur))
    return words


def _parse(text: str) -> list[_Section]:
    sections = [_Section("", "", 0)]  # statements before the first section header
    last_defaults: _Section | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        words = _words(raw)
        if not words:
            continue
        if words[0] in SECTIONS:
            sec = _Section(words[0], words[1] if len(words) > 1 else "", no, defaults=last_defaults)
            if sec.kind == "defaults":
                last_defaults = sec
            sections.append(sec)
        else:
            sections[-1].body.append(_Line(no, words))
    return sections


def haproxy_score(text: str) -> int:
    """Section headers that are not nginx statements (nginx has ``listen 443 ssl;``): how HAProxy-like ``text`` is."""
    return sum(1 for raw in text.splitlines()
               if (w := _words(raw)) and w[0] in SECTIONS and not w[-1].endswith((";", "{")))


def _options(words: list[str], into: dict[str, str | None], negated: set[str]) -> None:
    """Server/bind keywords into ``into`` (flag -> None); ``no-<flag>`` removes it and is remembered."""
    i = 0
    while i < len(words):
        w = words[i]
        if w in _WITH_ARG and i + 1 < len(words):
            into[w] = words[i + 1]
            i += 2
            continue
        if w.startswith("no-") and w not in _FLAGS:
            into.pop(w[3:], None)
            negated.add(w[3:])
        elif w in _FLAGS or i + 1 >= len(words) or words[i + 1] in _FLAGS or words[i + 1] in _WITH_ARG:
            into[w] = None
            negated.discard(w)
        else:  # an unknown keyword followed by a value
            into[w] = words[i + 1]
            i += 1
        i += 1


def _header_set(sections: list[_Section], header: str) -> bool:
    """Some ``http-request``/``http-response``/``http-after-response`` rule sets or adds ``header``."""
    for sec in sections:
        for ln in sec.body:
            w = ln.words
            if (len(w) >= 3 and w[0] in ("http-request", "http-response", "http-after-response")
                    and w[1] in ("set-header", "add-header") and w[2].lower() == header.lower()):
                return True
    return False


class _Auditor:
    def __init__(self, path: Path, sections: list[_Section]) -> None:
        self.path = path
        self.sections = sections
        self.findings: list[Finding] = []
        self.backends: list[TlsBackend] = []
        self.globals = [ln for s in sections if s.kind in ("global", "") for ln in s.body]
        self.ca_base = next((Path(ln.words[1]) for ln in self.globals if ln.words[0] == "ca-base"
                             and len(ln.words) > 1), None)

    def add(self, line: int, code: Code, message: str) -> None:
        self.findings.append(Finding(line, code, message))

    def _global(self, keyword: str) -> _Line | None:
        found = [ln for ln in self.globals if ln.words[0] == keyword]
        return found[-1] if found else None

    def run(self) -> Audit:
        by_name = {s.name: s for s in self.sections if s.kind in ("backend", "listen")}
        for sec in self.sections:
            if sec.kind in ("backend", "listen"):
                self._servers(sec)
            if sec.kind in ("frontend", "listen"):
                self._edge(sec, by_name)
        self.findings.sort(key=lambda f: (f.line, f.code))
        return Audit(self.path, "haproxy", self.findings, self.backends)

    # -- backends -----------------------------------------------------------------------------------------

    def _server_options(self, sec: _Section, words: list[str]) -> tuple[dict[str, str | None], set[str], list[str]]:
        opts: dict[str, str | None] = {}
        negated: set[str] = set()
        inherited: list[str] = []
        for owner in (sec.defaults, sec):
            for ln in owner.lines("default-server") if owner else []:
                _options(ln.words[1:], opts, negated)
                inherited.append(f"line {ln.no}")
        _options(words, opts, negated)
        return opts, negated, inherited

    def _servers(self, sec: _Section) -> None:
        httpchk = any(ln.words[:2] == ["option", "httpchk"] for owner in (sec.defaults, sec) if owner
                      for ln in owner.body)
        for ln in sec.lines("server"):
            if len(ln.words) < 3:
                continue
            name, addr = ln.words[1], ln.words[2]
            opts, negated, inherited = self._server_options(sec, ln.words[3:])
            label = f"{sec.where()} / server {name}"
            self._checks(ln, label, opts, negated, httpchk)
            if "ssl" not in opts:
                self.add(ln.no, Code.PLAINTEXT_BACKEND, f"{label}: no `ssl`: traffic to {addr} is not encrypted")
                continue
            self._verify(ln, label, addr, opts, inherited)

    def _verify(self, ln: _Line, label: str, addr: str, opts: dict[str, str | None], inherited: list[str]) -> None:
        server_verify = self._global("ssl-server-verify")
        verify = opts.get("verify") or (server_verify.words[1] if server_verify and len(server_verify.words) > 1
                                        else "required")
        sni = opts.get("sni")
        literal = sni[4:-1] if sni and sni.startswith("str(") and sni.endswith(")") else None
        name = opts.get("verifyhost") or literal
        endpoint = addr if addr.rpartition(":")[2].isdigit() else f"{addr}:443"
        ca = self._ca_path(opts.get("ca-file"))
        self.backends.append(TlsBackend(ln.no, label, (endpoint,), literal, name if verify != "none" else None, ca,
                                        verify != "none", client_crt="crt" in opts))
        if verify == "none":
            where = server_verify.no if server_verify else 0
            why = ("`verify none`" if opts.get("verify") else
                   f"no `verify` and the global `ssl-server-verify none` (line {where})")
            if opts.get("verify") and inherited and "verify" not in ln.words:
                why += f" (from default-server, {', '.join(inherited)})"
            self.add(ln.no, Code.VERIFY_NONE, f"{label}: {why}: HAProxy accepts any certificate {addr} presents, so "
                     "anyone on the path can read and change the re-encrypted traffic; add `verify required ca-file "
                     "<the issuer's bundle_file>`")
            return
        self._ca_file(ln, label, ca)
        if sni is None and "verifyhost" not in opts:  # a dynamic sni (req.hdr(host)) is checked too
            self.add(ln.no, Code.NO_NAME_CHECK, f"{label}: neither `sni str(NAME)` nor `verifyhost NAME`: HAProxy "
                     "verifies the chain but not the name, so any certificate the CA file trusts passes (another "
                     "backend's, or any website's with the system store)")
        if sni is None:
            self.add(ln.no, Code.NO_SNI, f"{label}: no `sni`: HAProxy sends no server name, so a backend serving "
                     "several certificates answers with its default one; add `sni str(<backend name>)`")

    def _ca_path(self, value: str | None) -> Path | str | None:
        if value is None or value == SYSTEM_CA:
            return value
        path = Path(value)
        if not path.is_absolute():
            path = (self.ca_base or self.path.parent) / path
        return path

    def _ca_file(self, ln: _Line, label: str, ca: Path | str | None) -> None:
        if ca is None:
            self.add(ln.no, Code.NO_CA_FILE, f"{label}: `verify required` without `ca-file`: HAProxy refuses to "
                     "start (\"verify is enabled by default but no CA file specified\"); point `ca-file` at the "
                     "issuer's bundle_file")
        elif ca == SYSTEM_CA:
            self.add(ln.no, Code.SYSTEM_CA, f"{label}: `ca-file @system-ca` trusts every public CA to vouch for this "
                     "backend; pin the issuer's bundle_file (`certd bundle NAME`)")
        else:
            assert isinstance(ca, Path)
            try:
                n = count_certificates(ca)
            except (OSError, ValueError) as exc:
                self.add(ln.no, Code.CA_FILE_UNREADABLE, f"{label}: cannot read ca-file {ca} ({unreadable(exc)}): "
                         "what it pins is unknown")
                return
            if n > MAX_PINNED:
                self.add(ln.no, Code.SYSTEM_CA, f"{label}: ca-file {ca} holds {n} certificates (more than "
                         f"{MAX_PINNED}): a trust store, not a pinned bundle; pin the issuer's bundle_file")

    def _checks(self, ln: _Line, label: str, opts: dict[str, str | None], negated: set[str], httpchk: bool) -> None:
        if "check" not in opts:
            self.add(ln.no, Code.NO_CHECK, f"{label}: no `check`: HAProxy keeps sending traffic to it when it is "
                     "down; add `check check-ssl check-sni <name>` and `option httpchk GET /healthz`")
            return
        if "ssl" in opts:
            elsewhere = "port" in opts or "addr" in opts
            if "check-ssl" not in opts and (elsewhere or "check-ssl" in negated):
                how = "`no-check-ssl`" if "check-ssl" in negated else "`port`/`addr` without `check-ssl`"
                self.add(ln.no, Code.CHECK_NOT_TLS, f"{label}: {how}: health checks go in clear text, so they do "
                         "not prove the TLS service works; add `check-ssl`")
            elif "check-sni" not in opts:
                self.add(ln.no, Code.CHECK_NO_SNI, f"{label}: no `check-sni`: health checks send no server name "
                         "(`sni` is not used by checks), so a backend with several certificates fails them or "
                         "answers with another one; add `check-sni <name>`")
        if not httpchk:
            self.add(ln.no, Code.CHECK_NOT_HTTP, f"{label}: no `option httpchk` in its section: the check only "
                     "proves a connection, not that the application answers; add `option httpchk GET /healthz`")

    # -- the edge -----------------------------------------------------------------------------------------

    def _edge(self, sec: _Section, backends: dict[str, _Section]) -> None:
        binds = [ln for ln in sec.lines("bind") if "ssl" in ln.words[2:]]
        if not binds:
            return
        for ln in binds:
            self._tls_min(sec, ln)
        modes = [ln.words[1] for owner in (sec.defaults, sec) if owner for ln in owner.lines("mode")
                 if len(ln.words) > 1]
        if modes and modes[-1] == "tcp":
            return  # TLS passed on as a stream: no HTTP header to set, the backends' own edge does
        targets = [sec] + [backends[ln.words[1]] for ln in sec.body
                           if ln.words[0] in ("default_backend", "use_backend") and len(ln.words) > 1
                           and ln.words[1] in backends]
        where = sec.where()
        if not _header_set(targets, "Strict-Transport-Security"):
            self.add(sec.no, Code.NO_HSTS, f"{where}: terminates TLS but sets no Strict-Transport-Security header: "
                     "a browser can be sent to http:// again; add `http-response set-header "
                     "Strict-Transport-Security \"max-age=63072000\"`")
        if not _header_set(targets, "X-Forwarded-Proto"):
            self.add(sec.no, Code.NO_FORWARDED_PROTO, f"{where}: X-Forwarded-Proto is not set: backends cannot tell "
                     "the client used HTTPS (redirect loops, insecure cookies), and a client-sent value passes; add "
                     "`http-request set-header X-Forwarded-Proto https`")
        unique_id = any(ln.words[0] == "unique-id-header" and len(ln.words) > 1
                        and ln.words[1].lower() == "x-request-id" for s in targets for ln in s.body)
        if not unique_id and not _header_set(targets, "X-Request-ID"):
            self.add(sec.no, Code.NO_REQUEST_ID, f"{where}: X-Request-ID is not set: the load balancer's and the "
                     "backends' logs cannot be joined; add `unique-id-format %[uuid()]` and `http-request "
                     "set-header X-Request-ID %[unique-id]`")

    def _tls_min(self, sec: _Section, ln: _Line) -> None:
        opts: dict[str, str | None] = {}
        negated: set[str] = set()
        defaults = self._global("ssl-default-bind-options")
        if defaults is not None:
            _options(defaults.words[1:], opts, negated)
        _options(ln.words[2:], opts, negated)
        where = f"{sec.where()}: bind {ln.words[1] if len(ln.words) > 1 else ''}"
        forced = [k for k in ("force-sslv3", "force-tlsv10", "force-tlsv11") if k in opts]
        low = (opts.get("ssl-min-ver") or "").lower()
        if forced or low in OLD_TLS:
            what = f"`{forced[0]}`" if forced else f"`ssl-min-ver {opts['ssl-min-ver']}`"
            self.add(ln.no, Code.TLS_BELOW_12, f"{where}: {what} accepts TLS below 1.2 (deprecated by RFC 8996); "
                     "use `ssl-min-ver TLSv1.2`")
        elif not low and not {"no-tlsv10", "no-tlsv11"} <= set(opts):
            self.add(ln.no, Code.TLS_MIN_IMPLICIT, f"{where}: no `ssl-min-ver` here or in `ssl-default-bind-options`: "
                     "HAProxy >= 2.2 defaults to TLSv1.2, older versions accept TLS 1.0; state `ssl-min-ver TLSv1.2`")


def audit_haproxy(path: Path, text: str) -> Audit:
    """Every pitfall of ``text`` (the content of ``path``; relative CA files resolve against ``ca-base`` or it)."""
    return _Auditor(path, _parse(text)).run()
