"""``audit-lb`` for nginx.conf: a tiny tokenizer that keeps line numbers, a block tree, and nginx's inheritance.

nginx's syntax is words ended by ``;`` or opening a ``{`` block, with quotes,
backslash escapes inside quotes, ``${var}`` inside words and ``#`` comments.
``include`` is not followed (the audit reads one file, and says so in the
docs). Two inheritance rules decide what a ``location`` really gets, and both
are classic pitfalls, so they are modelled exactly:

- a plain directive (``proxy_ssl_verify``) comes from the nearest level that
  sets it, else nginx's default (off, for every ``proxy_ssl_*`` switch);
- an array directive (``add_header``, ``proxy_set_header``) comes only from
  the nearest level that has *any* of them: one ``add_header`` in a location
  drops the server's HSTS header there.

nginx 1.22 (Debian 12) facts the checks follow: ``proxy_ssl_verify on``
without ``proxy_ssl_trusted_certificate`` fails ``nginx -t``; without
``proxy_ssl_name`` the name checked (and sent) is the host of ``proxy_pass``,
for an ``upstream`` group its name; ``ssl_protocols`` defaults to ``TLSv1
TLSv1.1 TLSv1.2 TLSv1.3`` before 1.23.4. Open-source nginx has no active
health checks, so there is nothing to audit for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from certd.lb.audit.findings import (
    MAX_PINNED,
    OLD_TLS,
    Audit,
    AuditError,
    Code,
    Finding,
    TlsBackend,
    count_certificates,
    is_ip,
    unreadable,
)

__all__ = ["audit_nginx", "nginx_score"]


@dataclass
class _Directive:
    name: str
    args: list[str]
    line: int
    is_block: bool = False
    children: list[_Directive] = field(default_factory=list)

    def own(self, name: str) -> list[_Directive]:
        return [d for d in self.children if d.name == name]

    def where(self) -> str:
        return " ".join([self.name, *self.args])


def _tokens(text: str) -> list[tuple[str, int, bool]]:
    """(token, line, quoted); ``{``, ``}`` and ``;`` are tokens of their own unless quoted."""
    out: list[tuple[str, int, bool]] = []
    cur: list[str] = []
    line, start, quoted = 1, 1, False
    i, n = 0, len(text)

    def flush() -> None:
        nonlocal cur, quoted
        if cur or quoted:
            out.append(("".join(cur), start, quoted))
        cur, quoted = [], False

    while i < n:
        ch = text[i]
        if ch in "\"'" and not cur:
            end, start, buf = ch, line, []
            i += 1
            while i < n and text[i] != end:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                line += text[i] == "\n"
                buf.append(text[i])
                i += 1
            if i >= n:
                raise AuditError(f"line {start}: unterminated quote")
            cur, quoted = buf, True
            flush()
        elif ch == "#" and not cur:
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif ch.isspace():
            flush()
            line += ch == "\n"
        elif ch in "{};" and not (ch == "{" and cur and cur[-1] == "$"):
            flush()
            out.append((ch, line, False))
        elif ch == "{":  # ${var}: a variable, part of the word up to its closing brace
            close = text.find("}", i)
            if close < 0:
                raise AuditError(f"line {line}: unterminated ${{")
            cur.extend(text[i:close + 1])
            i = close
        else:
            if not cur:
                start = line
            cur.append(ch)
        i += 1
    flush()
    return out


def _tree(text: str) -> _Directive:
    root = _Directive("", [], 0, True)
    stack = [root]
    words: list[tuple[str, int]] = []
    for tok, line, quoted in _tokens(text):
        if quoted or tok not in "{};":
            words.append((tok, line))
            continue
        if tok == "}":
            if words or len(stack) == 1:
                raise AuditError(f"line {line}: unexpected '}}'")
            stack.pop()
            continue
        if not words:
            raise AuditError(f"line {line}: unexpected '{tok}'")
        d = _Directive(words[0][0], [w for w, _ in words[1:]], words[0][1])
        stack[-1].children.append(d)
        words = []
        if tok == "{":
            d.is_block = True
            stack.append(d)
    if words or len(stack) > 1:
        raise AuditError(f"unexpected end of file: {len(stack) - 1} block(s) not closed")
    return root


def nginx_score(text: str) -> int:
    """Statements ending in ``;`` or opening ``{``: how nginx-like ``text`` is."""
    return sum(1 for raw in text.splitlines() if raw.split("#", 1)[0].rstrip().endswith((";", "{")))


def _nearest(chain: list[_Directive], name: str) -> _Directive | None:
    for level in reversed(chain):
        found = level.own(name)
        if found:
            return found[-1]
    return None


def _array(chain: list[_Directive], name: str) -> tuple[list[_Directive], _Directive | None]:
    """What an array directive is at the end of ``chain``, and the level it comes from (nginx's inheritance)."""
    for level in reversed(chain):
        found = level.own(name)
        if found:
            return found, level
    return [], None


def _names(headers: list[_Directive]) -> set[str]:
    return {d.args[0].lower() for d in headers if d.args}


def _on(d: _Directive | None) -> bool:
    return d is not None and bool(d.args) and d.args[0].lower() == "on"


class _Auditor:
    def __init__(self, path: Path, root: _Directive) -> None:
        self.path = path
        self.root = root
        self.findings: list[Finding] = []
        self.backends: list[TlsBackend] = []
        self.upstreams = {d.args[0]: d for http in root.own("http") for d in http.own("upstream") if d.args}

    def add(self, line: int, code: Code, message: str) -> None:
        self.findings.append(Finding(line, code, message))

    def run(self) -> Audit:
        for http in self.root.own("http"):
            for server in http.own("server"):
                edge = any("ssl" in d.args for d in server.own("listen")) or _on(_nearest([server], "ssl"))
                if edge:
                    self._edge([self.root, http, server])
                self._walk([self.root, http, server], edge)
        self.findings.sort(key=lambda f: (f.line, f.code))
        return Audit(self.path, "nginx", self.findings, self.backends)

    def _walk(self, chain: list[_Directive], edge: bool) -> None:
        level = chain[-1]
        for d in level.own("proxy_pass"):
            self._proxy(chain, d, edge)
        for child in level.children:
            if child.is_block and child.name in ("location", "if", "limit_except"):
                if edge and child.name == "location":
                    self._dropped_hsts([*chain, child])
                self._walk([*chain, child], edge)

    # -- the edge -----------------------------------------------------------------------------------------

    def _edge(self, chain: list[_Directive]) -> None:
        server = chain[-1]
        named = next((d.args for d in server.own("server_name")), None) or next(
            (d.args[:1] for d in server.own("listen")), [])
        where = f"server {' '.join(named)}".rstrip()
        protocols = _nearest(chain, "ssl_protocols")
        if protocols is None:
            self.add(server.line, Code.TLS_BELOW_12, f"{where}: no ssl_protocols: nginx before 1.23.4 (Debian 12 "
                     "ships 1.22) allows TLSv1 and TLSv1.1 by default; set `ssl_protocols TLSv1.2 TLSv1.3;`")
        else:
            old = [p for p in protocols.args if p.lower() in OLD_TLS]
            if old:
                self.add(protocols.line, Code.TLS_BELOW_12, f"{where}: ssl_protocols allows {', '.join(old)} "
                         "(deprecated by RFC 8996); set `ssl_protocols TLSv1.2 TLSv1.3;`")
        headers, _ = _array(chain, "add_header")
        if "strict-transport-security" not in _names(headers):
            self.add(server.line, Code.NO_HSTS, f"{where}: terminates TLS but adds no Strict-Transport-Security "
                     "header: a browser can be sent to http:// again; add `add_header Strict-Transport-Security "
                     "\"max-age=63072000\" always;`")

    def _dropped_hsts(self, chain: list[_Directive]) -> None:
        headers, level = _array(chain, "add_header")
        inherited, _ = _array(chain[:-1], "add_header")
        if (level is chain[-1] and "strict-transport-security" in _names(inherited)
                and "strict-transport-security" not in _names(headers)):
            self.add(chain[-1].line, Code.NO_HSTS, f"{chain[-1].where()}: its own add_header drops the inherited "
                     "Strict-Transport-Security header (nginx inherits add_header only into levels that set none); "
                     "repeat it here")

    # -- backends -----------------------------------------------------------------------------------------

    def _proxy(self, chain: list[_Directive], d: _Directive, edge: bool) -> None:
        url = d.args[0] if d.args else ""
        label = f"{chain[-1].where()} / proxy_pass {url}"
        if edge:
            sent, owner = _array(chain, "proxy_set_header")
            names = _names(sent)
            where = f" (proxy_set_header here comes only from line {owner.line})" if owner and sent else ""
            if "x-forwarded-proto" not in names:
                self.add(d.line, Code.NO_FORWARDED_PROTO, f"{label}: X-Forwarded-Proto is not set{where}: backends "
                         "cannot tell the client used HTTPS; add `proxy_set_header X-Forwarded-Proto $scheme;`")
            if "x-request-id" not in names:
                self.add(d.line, Code.NO_REQUEST_ID, f"{label}: X-Request-ID is not set{where}: the logs cannot be "
                         "joined; add `proxy_set_header X-Request-ID $request_id;`")
        scheme, _, rest = url.partition("://")
        if scheme.lower() != "https":
            if scheme.lower() == "http":
                self.add(d.line, Code.PLAINTEXT_BACKEND, f"{label}: traffic to the backend is not encrypted; use "
                         "https:// with proxy_ssl_verify on")
            return
        hostport = rest.split("/", 1)[0]
        host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
        group = self.upstreams.get(hostport)
        if group is not None:
            endpoints = tuple(s.args[0] if s.args[0].rpartition(":")[2].isdigit() else f"{s.args[0]}:80"
                              for s in group.own("server") if s.args)
        else:
            endpoints = (hostport if hostport.rpartition(":")[2].isdigit() and not hostport.endswith("]")
                         else f"{hostport}:443",)
        self._verify(chain, d, label, host, endpoints, group is not None)

    def _verify(self, chain: list[_Directive], d: _Directive, label: str, host: str, endpoints: tuple[str, ...],
                upstream: bool) -> None:
        verify = _nearest(chain, "proxy_ssl_verify")
        ssl_name = _nearest(chain, "proxy_ssl_name")
        name = ssl_name.args[0] if ssl_name and ssl_name.args else host
        dynamic = "$" in name
        sends = _on(_nearest(chain, "proxy_ssl_server_name"))
        trusted = _nearest(chain, "proxy_ssl_trusted_certificate")
        ca = None
        if trusted is not None and trusted.args:
            ca = Path(trusted.args[0]) if Path(trusted.args[0]).is_absolute() else self.path.parent / trusted.args[0]
        on = _on(verify)
        self.backends.append(TlsBackend(d.line, label, endpoints, None if dynamic or not sends or is_ip(name) else name,
                                        name if on and not dynamic else None, ca, on))
        if not on:
            why = (f"proxy_ssl_verify off (line {verify.line})" if verify
                   else "no proxy_ssl_verify (nginx's default is off)")
            self.add(d.line, Code.VERIFY_NONE, f"{label}: {why}: nginx accepts any certificate the backend presents, "
                     "so anyone on the path can read and change the traffic; add `proxy_ssl_verify on;` and "
                     "`proxy_ssl_trusted_certificate <the issuer's bundle_file>;`")
            return
        if ca is None:
            self.add(d.line, Code.NO_CA_FILE, f"{label}: proxy_ssl_verify on without proxy_ssl_trusted_certificate: "
                     "`nginx -t` refuses it; point it at the issuer's bundle_file")
        else:
            try:
                count = count_certificates(ca)
            except (OSError, ValueError) as exc:
                self.add(trusted.line if trusted else d.line, Code.CA_FILE_UNREADABLE,
                         f"{label}: cannot read proxy_ssl_trusted_certificate {ca} ({unreadable(exc)}): what it pins "
                         "is unknown")
            else:
                if count > MAX_PINNED:
                    self.add(trusted.line if trusted else d.line, Code.SYSTEM_CA,
                             f"{label}: proxy_ssl_trusted_certificate {ca} holds {count} certificates (more than "
                             f"{MAX_PINNED}): a trust store, not a pinned bundle; pin the issuer's bundle_file")
        if not sends:
            self.add(d.line, Code.NO_SNI, f"{label}: no `proxy_ssl_server_name on`: nginx sends no server name, so a "
                     "backend serving several certificates answers with its default one")
        if ssl_name is None and upstream:
            self.add(d.line, Code.NO_SSL_NAME, f"{label}: no proxy_ssl_name: nginx checks the certificate against "
                     f"the upstream group's name {host!r} (and sends it as SNI); set `proxy_ssl_name <the backend "
                     "certificate's name>;`")


def audit_nginx(path: Path, text: str) -> Audit:
    """Every pitfall of ``text`` (the content of ``path``; relative files resolve against its directory)."""
    return _Auditor(path, _tree(text)).run()
