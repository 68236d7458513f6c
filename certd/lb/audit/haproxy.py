"""``audit-lb`` for haproxy.cfg: sections and their defaults, then the pitfalls of each server and TLS edge.

Lines and words come from ``haproxy_read`` (HAProxy's own quoting rules,
``.if`` blocks, what it refuses), keywords from ``haproxy_options``. Here:

- a proxy takes its settings from the defaults section named by ``from``,
  else from the last defaults section before it in the file, named or not;
  a ``defaults X from Y`` takes Y's first; a defaults section without
  ``from`` starts afresh. An unknown, later or ambiguous ``from`` name, a
  header with other words, and two proxies of the same name and capability
  (or two servers of one name) are refused by HAProxy: ``config-refused``;
- ``default-server`` applies to the ``server`` lines after it;
  ``server-template`` lines are servers (``<prefix> <count> <address>``);
- each server (and each TLS edge) is judged from the lines it rests on; if
  one of them carries a doubt, its findings are UNKNOWN (``settle``);
- a file without a ``global`` section is one of several ``-f`` files: the
  global section and, for a proxy without a defaults section before it, the
  defaults are in a file not seen, so what a server does not state itself is
  UNKNOWN (``unseen-context``) rather than HAProxy's built-in default.

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

from dataclasses import replace
from pathlib import Path

from certd.lb.audit.findings import Audit, Code, Finding, doubt_text, settle
from certd.lb.audit.haproxy_checks import Context, header_findings, httpchk, server_findings, tls_min_findings
from certd.lb.audit.haproxy_options import Options
from certd.lb.audit.haproxy_read import Line, read_haproxy, split_words
from certd.lb.audit.haproxy_sections import SECTIONS, Section, parse_sections

__all__ = ["audit_haproxy", "haproxy_score"]


def haproxy_score(text: str) -> int:
    """Section headers that are not nginx statements (nginx has ``listen 443 ssl;``): how HAProxy-like ``text`` is."""
    return sum(1 for raw in text.split("\n")
               if (w := split_words(raw).words) and w[0] in SECTIONS and not w[-1].endswith((";", "{")))


class _Auditor:
    def __init__(self, path: Path, text: str) -> None:
        reading = read_haproxy(text)
        self.sections, refused = parse_sections(reading.lines)
        self.findings: list[Finding] = [*reading.refused, *refused]
        self.ctx = Context(path, not any(s.kind == "global" for s in self.sections),
                           [ln for s in self.sections if s.kind in ("global", "") for ln in s.body], [])

    def run(self) -> Audit:
        by_name = {s.name: s for s in self.sections if s.kind in ("backend", "listen")}
        for sec in self.sections:
            if sec.kind in ("backend", "listen"):
                self._servers(sec)
            if sec.kind in ("frontend", "listen"):
                self._edge(sec, by_name)
        findings = sorted(dict.fromkeys(self.findings), key=lambda f: (f.line, f.code))
        return Audit(self.ctx.path, "haproxy", findings, self.ctx.backends)

    def _refuse(self, ln: Line, why: str) -> None:
        self.findings.append(Finding(ln.no, Code.CONFIG_REFUSED, f"HAProxy refuses this line: {why}"))

    def _servers(self, sec: Section) -> None:
        """Each server line with the default-server lines before it (its defaults' first), in file order."""
        base = Options()
        for owner in sec.chain()[:-1]:
            for ln in owner.lines("default-server"):
                base.apply(ln, 1)
        names: dict[str, Line] = {}
        checked = httpchk(sec)
        for ln in sec.body:
            kw = ln.words[0]
            if kw == "default-server":
                base.apply(ln, 1)
                continue
            if kw not in ("server", "server-template"):
                continue
            template = kw == "server-template"
            first = 4 if template else 3  # server-template <prefix> <count> <address> [keywords...]
            if len(ln.words) < first:
                self._refuse(ln, f"`{kw}` expects {'<prefix> <count> ' if template else '<name> '}<address>")
                continue
            name = " ".join(ln.words[1:first - 1])
            if not template and name in names and not ln.doubts and not names[name].doubts:
                self._refuse(ln, f"{sec.where()} has a server named {name!r} already (line {names[name].no})")
            names.setdefault(name, ln)
            opts = base.copy()
            opts.apply(ln, first)
            self.findings += opts.refused
            label = f"{sec.where()} / {kw} {name}"
            known = len(self.ctx.backends)
            found, doubts = server_findings(self.ctx, sec, ln, label, ln.words[first - 1], opts, checked)
            self.findings += settle(found, doubts, ln.no, label)
            if len(self.ctx.backends) > known:  # --live and the name checks inherit the doubt
                self.ctx.backends[-1] = replace(self.ctx.backends[-1], doubt=doubt_text(doubts))

    def _edge(self, sec: Section, backends: dict[str, Section]) -> None:
        binds = [ln for ln in sec.lines("bind") if "ssl" in ln.words[2:]]
        for ln in binds:
            opts = Options()
            for g in self.ctx.global_lines("ssl-default-bind-options"):
                opts.apply(g, 1, server=False)
            opts.apply(ln, 2, server=False)
            doubts = [*opts.doubts, *sec.doubts()]
            found = tls_min_findings(self.ctx, sec, ln, opts, doubts)
            where = f"{sec.where()}: bind {ln.words[1] if len(ln.words) > 1 else ''}"
            self.findings += settle(found, doubts, ln.no, where)
        if binds:
            found, doubts = header_findings(self.ctx, sec, backends)
            self.findings += settle(found, doubts, sec.no, sec.where())


def audit_haproxy(path: Path, text: str) -> Audit:
    """Every pitfall of ``text`` (the content of ``path``; relative CA files resolve against ``ca-base`` or it)."""
    return _Auditor(path, text).run()
