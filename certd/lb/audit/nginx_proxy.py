"""One nginx ``proxy_pass``: what it verifies, the name it checks and sends, the headers it passes on.

Every value comes from a ``Lookup`` along the chain of blocks (http, server,
location, ...), which applies nginx's inheritance and records, as doubts,
the levels it had to look past that the audit did not see (an include it
could not read, the file including a sites-enabled/ snippet): something
there could set the value, so what rests on it is UNKNOWN, not OK.
"""

from __future__ import annotations

from pathlib import Path

from certd.lb.audit.findings import MAX_PINNED, Code, Doubt, Finding, TlsBackend, count_certificates, is_ip, unreadable
from certd.lb.audit.nginx_read import Directive

__all__ = ["Lookup", "proxy_findings"]


class Lookup:
    """nginx's inheritance along ``chain`` (outermost first); ``doubts`` collects the unseen levels consulted."""

    def __init__(self, chain: list[Directive]) -> None:
        self.chain = chain
        self.doubts: list[Doubt] = []

    def _past(self, levels: list[Directive]) -> None:
        self.doubts += [u for level in levels for u in level.unseen]

    def plain(self, name: str) -> Directive | None:
        """The nearest level's value; an unseen level nearer could override it (one in the same level would be
        a duplicate, which nginx refuses)."""
        for idx in range(len(self.chain) - 1, -1, -1):
            found = self.chain[idx].own(name)
            if found:
                self.doubts += found[-1].doubts
                self._past(self.chain[idx + 1:])
                return found[-1]
        self._past(self.chain)
        return None

    def array(self, name: str) -> tuple[list[Directive], Directive | None]:
        """All of the nearest level that has any (nginx's array inheritance), and that level; an unseen level
        there could add to them, one nearer would replace them."""
        for idx in range(len(self.chain) - 1, -1, -1):
            found = self.chain[idx].own(name)
            if found:
                self.doubts += [x for d in found for x in d.doubts]
                self._past(self.chain[idx:])
                return found, self.chain[idx]
        self._past(self.chain)
        return [], None

    def bitmask(self, name: str) -> list[Directive]:
        """Like ``array``: ``ssl_protocols`` twice in one level is the union of both (nginx warns, then ORs)."""
        return self.array(name)[0]


def _on(d: Directive | None) -> bool:
    return d is not None and bool(d.args) and d.args[0].lower() == "on"


def _names(headers: list[Directive]) -> set[str]:
    return {d.args[0].lower() for d in headers if d.args}


def proxy_findings(path: Path, upstreams: dict[str, Directive], chain: list[Directive], d: Directive, edge: bool,
                   look: Lookup, backends: list[TlsBackend]) -> list[Finding]:
    """The pitfalls of one ``proxy_pass`` at the end of ``chain``; a TLS one is added to ``backends``."""
    url = d.args[0] if d.args else ""
    label = f"{chain[-1].where()} / proxy_pass {url}"
    found: list[Finding] = []

    def add(code: Code, message: str, at: Directive = d) -> None:
        found.append(Finding(at.line, code, f"{label}: {message}", file=at.file))

    if edge:
        sent, owner = look.array("proxy_set_header")
        names = _names(sent)
        where = f" (proxy_set_header here comes only from {sent[0].at()})" if owner and sent else ""
        if "x-forwarded-proto" not in names:
            add(Code.NO_FORWARDED_PROTO, f"X-Forwarded-Proto is not set{where}: backends cannot tell the client used "
                "HTTPS; add `proxy_set_header X-Forwarded-Proto $scheme;`")
        if "x-request-id" not in names:
            add(Code.NO_REQUEST_ID, f"X-Request-ID is not set{where}: the logs cannot be joined; add "
                "`proxy_set_header X-Request-ID $request_id;`")
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "https":
        if scheme.lower() == "http":
            add(Code.PLAINTEXT_BACKEND, "traffic to the backend is not encrypted; use https:// with "
                "proxy_ssl_verify on")
        return found
    hostport = rest.split("/", 1)[0]
    host = hostport.rsplit(":", 1)[0] if not hostport.endswith("]") else hostport
    group = upstreams.get(hostport)
    if group is not None:
        endpoints = tuple(s.args[0] if s.args[0].rpartition(":")[2].isdigit() else f"{s.args[0]}:80"
                          for s in group.own("server") if s.args)
    else:
        endpoints = (hostport if hostport.rpartition(":")[2].isdigit() and not hostport.endswith("]")
                     else f"{hostport}:443",)

    verify = look.plain("proxy_ssl_verify")
    ssl_name = look.plain("proxy_ssl_name")
    name = ssl_name.args[0] if ssl_name and ssl_name.args else host
    dynamic = "$" in name
    sends = _on(look.plain("proxy_ssl_server_name"))
    trusted = look.plain("proxy_ssl_trusted_certificate")
    ca = None
    if trusted is not None and trusted.args:
        ca = Path(trusted.args[0]) if Path(trusted.args[0]).is_absolute() else path.parent / trusted.args[0]
    on = _on(verify)
    backends.append(TlsBackend(d.line, label, endpoints, None if dynamic or not sends or is_ip(name) else name,
                               name if on and not dynamic else None, ca, on, file=d.file))
    if not on:
        why = (f"proxy_ssl_verify off ({verify.at()})" if verify
               else "no proxy_ssl_verify (nginx's default is off)")
        add(Code.VERIFY_NONE, f"{why}: nginx accepts any certificate the backend presents, so anyone on the path can "
            "read and change the traffic; add `proxy_ssl_verify on;` and `proxy_ssl_trusted_certificate <the "
            "issuer's bundle_file>;`")
        return found
    at = trusted or d
    if ca is None:
        add(Code.NO_CA_FILE, "proxy_ssl_verify on without proxy_ssl_trusted_certificate: `nginx -t` refuses it; "
            "point it at the issuer's bundle_file")
    else:
        try:
            count = count_certificates(ca)
        except (OSError, ValueError) as exc:
            add(Code.CA_FILE_UNREADABLE, f"cannot read proxy_ssl_trusted_certificate {ca} ({unreadable(exc)}): what "
                "it pins is unknown", at)
        else:
            if count > MAX_PINNED:
                add(Code.SYSTEM_CA, f"proxy_ssl_trusted_certificate {ca} holds {count} certificates (more than "
                    f"{MAX_PINNED}): a trust store, not a pinned bundle; pin the issuer's bundle_file", at)
    if not sends:
        add(Code.NO_SNI, "no `proxy_ssl_server_name on`: nginx sends no server name, so a backend serving several "
            "certificates answers with its default one")
    if ssl_name is None and group is not None:
        add(Code.NO_SSL_NAME, f"no proxy_ssl_name: nginx checks the certificate against the upstream group's name "
            f"{host!r} (and sends it as SNI); set `proxy_ssl_name <the backend certificate's name>;`")
    return found
