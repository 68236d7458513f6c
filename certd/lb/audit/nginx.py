"""``audit-lb`` for nginx.conf: the block tree (``nginx_read``), nginx's inheritance, the pitfalls of each proxy.

Inheritance decides what a ``location`` really gets, and its rules are
classic pitfalls, so they are modelled exactly:

- a plain directive (``proxy_ssl_verify``) comes from the nearest level that
  sets it, else nginx's default (off, for every ``proxy_ssl_*`` switch); set
  twice in one level, nginx refuses the file;
- an array directive (``add_header``, ``proxy_set_header``) comes only from
  the nearest level that has *any* of them: one ``add_header`` in a location
  drops the server's HSTS header there;
- ``ssl_protocols`` given twice in one level is the union of both.

A level with an include the audit could not read, and the http block that
includes a file with no http block of its own (a sites-enabled/ file), are
not seen: a value looked up past them (or not found at all) is a doubt, so
what rests on it is UNKNOWN. Blocks nested deeper than ``MAX_DEPTH`` are not
followed (nginx has no such limit; no real file comes near it): UNKNOWN.
Stream proxies (``stream {}``) are not audited: UNKNOWN too.

nginx 1.22 (Debian 12) facts the checks follow: ``proxy_ssl_verify on``
without ``proxy_ssl_trusted_certificate`` fails ``nginx -t``; a flag other
than ``on``/``off`` (any case) is refused; without ``proxy_ssl_name`` the name
checked (and sent) is the host of ``proxy_pass``, for an ``upstream`` group
its name; ``ssl_protocols`` defaults to ``TLSv1 TLSv1.1 TLSv1.2 TLSv1.3``
before 1.23.4. Open-source nginx has no active health checks.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from certd.lb.audit.findings import Audit, Code, Doubt, Finding, TlsBackend, doubt_text, settle
from certd.lb.audit.nginx_proxy import Lookup, proxy_findings
from certd.lb.audit.nginx_read import Directive, read_nginx

__all__ = ["MAX_DEPTH", "audit_nginx", "nginx_score"]

_STATEMENT_END = re.compile(r";(?=\s|$)")
MAX_DEPTH = 64  # levels of blocks the audit follows (nginx accepts thousands)
_NESTED = frozenset({"location", "if", "limit_except"})
_FLAGS = frozenset({"proxy_ssl_verify", "proxy_ssl_server_name", "ssl", "proxy_ssl"})
_ONCE = frozenset({"proxy_ssl_verify", "proxy_ssl_server_name", "proxy_ssl_name", "proxy_ssl_trusted_certificate",
                   "proxy_ssl"})


def nginx_score(text: str) -> int:
    """Statements ending in ``;`` or opening ``{`` (also several on one line): how nginx-like ``text`` is.

    HAProxy's anonymous ACLs (``if { path_beg /api }``) put ``{`` mid-line, so only a ``{`` ending a line counts.
    """
    return sum(len(_STATEMENT_END.findall(code)) + code.rstrip().endswith("{")
               for code in (raw.split("#", 1)[0] for raw in text.split("\n")))


def _refused(d: Directive, why: str) -> Finding:
    return Finding(d.line, Code.CONFIG_REFUSED, f"nginx refuses this file: {why}", file=d.file)


class _Auditor:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        tree = read_nginx(path, text)
        self.root = tree.root
        self.findings: list[Finding] = list(tree.findings)
        self.backends: list[TlsBackend] = []
        http = self.root.own("http")
        self.snippet = not http and any(d.name in ("server", "location", "upstream", "proxy_pass")
                                        for d in self.root.children)
        # A file with no http block is included by one the audit did not see: that file's levels are one more,
        # outermost, level whose content is unseen (a value found in this file is not doubted; one not found is).
        self.outer = Directive("", [], 0, None, True, unseen=[Doubt(
            self.root.children[0].line if self.root.children else 0, Code.UNSEEN, "this file has no http block: "
            "it is included by another one (sites-enabled/, conf.d/), whose settings it inherits and the audit did "
            "not see; audit the main nginx.conf, which includes it")]) if self.snippet else None
        self.upstreams = {d.args[0]: d for owner in (*http, self.root) for d in owner.own("upstream") if d.args}

    def run(self) -> Audit:
        self._validate()
        for stream in self.root.own("stream"):
            self.findings.append(Finding(stream.line, Code.NOT_AUDITED, "stream proxies (TLS to backends with "
                                         "`proxy_ssl`) are not audited: what they verify is not judged",
                                         doubt="not audited", file=stream.file))
        starts = ([[self.root, http] for http in self.root.own("http")]
                  or ([[self.outer, self.root]] if self.outer else []))
        for chain in starts:
            self._walk(chain)
        findings = sorted(dict.fromkeys(self.findings), key=lambda f: (str(f.file or ""), f.line, f.code))
        return Audit(self.path, "nginx", findings, self.backends)

    def _validate(self) -> None:
        """What nginx refuses in the directives the audit reads: a flag not on/off, a directive set twice."""
        todo = [self.root]
        while todo:
            block = todo.pop()
            seen: dict[str, Directive] = {}
            for d in block.children:
                if d.is_block:
                    todo.append(d)
                    continue
                if d.doubts:
                    self.findings += [Finding(x.line, x.code, x.why, doubt=x.why, file=x.file) for x in d.doubts]
                    continue
                if d.name in _FLAGS and (len(d.args) != 1 or d.args[0].lower() not in ("on", "off")):
                    self.findings.append(_refused(d, f"`{d.where()}`: it takes `on` or `off`"))
                elif d.name in ("proxy_ssl_name", "proxy_ssl_trusted_certificate") and len(d.args) != 1:
                    self.findings.append(_refused(d, f"`{d.name}` takes one value"))
                if d.name in _ONCE:
                    if d.name in seen:
                        self.findings.append(_refused(d, f"`{d.name}` is set twice in one block (also "
                                                      f"{seen[d.name].at()})"))
                    seen.setdefault(d.name, d)

    def _walk(self, start: list[Directive]) -> None:
        """Every server (edge checks) and every proxy_pass below ``start``, without recursion, ``MAX_DEPTH`` deep."""
        todo = [start]
        while todo:
            chain = todo.pop()
            level = chain[-1]
            if len(chain) > MAX_DEPTH:
                why = f"blocks nested {len(chain) - 1} deep: the audit follows {MAX_DEPTH - 1}"
                self.findings.append(Finding(level.line, Code.TOO_DEEP, f"{level.where()}: {why}; what is inside "
                                             "is not judged", doubt=why, file=level.file))
                continue
            in_server = any(d.name == "server" for d in chain)
            edge = self._edge_of(chain)
            if level.name == "server" and edge:
                self._edge(chain)
            if level.name == "location" and edge:
                self._dropped_hsts(chain)
            if in_server or self.snippet:
                for d in level.own("proxy_pass"):
                    self._proxy(chain, d, edge)
            for child in reversed(level.children):
                if child.is_block and (child.name in _NESTED or (child.name == "server" and not in_server
                                                                   and level.name in ("http", ""))):
                    todo.append([*chain, child])

    @staticmethod
    def _edge_of(chain: list[Directive]) -> bool:
        server = next((d for d in chain if d.name == "server"), None)
        if server is None:
            return False
        return any("ssl" in d.args for d in server.own("listen")) or any(
            bool(d.args) and d.args[0].lower() == "on" for d in server.own("ssl"))

    def _settle(self, found: list[Finding], look: Lookup, at: Directive, label: str) -> None:
        self.findings += settle(found, look.doubts, at.line, label, at.file)

    # -- the edge -----------------------------------------------------------------------------------------

    def _edge(self, chain: list[Directive]) -> None:
        server = chain[-1]
        named = next((d.args for d in server.own("server_name")), None) or next(
            (d.args[:1] for d in server.own("listen")), [])
        where = f"server {' '.join(named)}".rstrip()
        look = Lookup(chain)
        found: list[Finding] = []
        protocols = look.bitmask("ssl_protocols")
        if not protocols:
            found.append(Finding(server.line, Code.TLS_BELOW_12, f"{where}: no ssl_protocols: nginx before 1.23.4 "
                                 "(Debian 12 ships 1.22) allows TLSv1 and TLSv1.1 by default; set `ssl_protocols "
                                 "TLSv1.2 TLSv1.3;`", file=server.file))
        else:
            old = [(d, p) for d in protocols for p in d.args if p.lower() in ("sslv3", "tlsv1", "tlsv1.1")]
            if old:
                at = old[0][0]  # the line that allows it (two ssl_protocols in one block add up)
                found.append(Finding(at.line, Code.TLS_BELOW_12, f"{where}: ssl_protocols allows "
                                     f"{', '.join(p for _, p in old)} (deprecated by RFC 8996); set `ssl_protocols "
                                     "TLSv1.2 TLSv1.3;`", file=at.file))
        headers, _ = look.array("add_header")
        if "strict-transport-security" not in _names(headers):
            found.append(Finding(server.line, Code.NO_HSTS, f"{where}: terminates TLS but adds no "
                                 "Strict-Transport-Security header: a browser can be sent to http:// again; add "
                                 "`add_header Strict-Transport-Security \"max-age=63072000\" always;`",
                                 file=server.file))
        self._settle(found, look, server, where)

    def _dropped_hsts(self, chain: list[Directive]) -> None:
        look = Lookup(chain)
        headers, level = look.array("add_header")
        inherited, _ = Lookup(chain[:-1]).array("add_header")
        if (level is chain[-1] and "strict-transport-security" in _names(inherited)
                and "strict-transport-security" not in _names(headers)):
            found = [Finding(chain[-1].line, Code.NO_HSTS, f"{chain[-1].where()}: its own add_header drops the "
                             "inherited Strict-Transport-Security header (nginx inherits add_header only into "
                             "levels that set none); repeat it here", file=chain[-1].file)]
            self._settle(found, look, chain[-1], chain[-1].where())

    # -- backends -----------------------------------------------------------------------------------------

    def _proxy(self, chain: list[Directive], d: Directive, edge: bool) -> None:
        look = Lookup(chain)
        look.doubts += d.doubts
        known = len(self.backends)
        found = proxy_findings(self.path, self.upstreams, chain, d, edge, look, self.backends)
        label = f"{chain[-1].where()} / proxy_pass {d.args[0] if d.args else ''}"
        self._settle(found, look, d, label)
        if len(self.backends) > known:
            self.backends[-1] = replace(self.backends[-1], doubt=doubt_text(look.doubts))


def _names(headers: list[Directive]) -> set[str]:
    return {d.args[0].lower() for d in headers if d.args}


def audit_nginx(path: Path, text: str) -> Audit:
    """Every pitfall of ``text`` (the content of ``path``; includes and relative files resolve against its
    directory, as nginx resolves them against its main file's)."""
    return _Auditor(path, text).run()
