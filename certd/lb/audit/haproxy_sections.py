"""HAProxy's sections, and which defaults section each proxy takes its settings from (configuration.txt 4).

"All of frontend, backend and listen sections always take their initial
settings from a defaults section, by default the latest one that appears
before the newly created section", or the one named after ``from``; a
defaults section may itself start ``from`` another one, and one without
``from`` resets everything. Tried with HAProxy 2.6: a ``from`` name that is
not defined before, or defined twice, is a fatal error, as is any other word
on the header, or two proxies of one name that both take traffic in (or both
send it out: a frontend and a backend may share a name).

A header inside a ``.if`` the audit cannot decide may not be read; then the
lines after it belong to the section before. Both sections carry that doubt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from certd.lb.audit.findings import Code, Doubt, Finding
from certd.lb.audit.haproxy_read import Line

__all__ = ["PROXIES", "SECTIONS", "Section", "parse_sections"]

SECTIONS = frozenset({
    "global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist", "mailers",
    "program", "http-errors", "ring", "cache", "crt-store", "traces",
})
PROXIES = frozenset({"frontend", "backend", "listen"})
_CAPS = {"frontend": {"in"}, "backend": {"out"}, "listen": {"in", "out"}}


@dataclass
class Section:
    """One section: its header line, its statements, the defaults section it takes (``parent``)."""

    kind: str
    name: str
    header: Line
    body: list[Line] = field(default_factory=list)
    parent: Section | None = None
    tail: list[Doubt] = field(default_factory=list)  # the next header may not be read: its lines may be ours
    unopened: bool = False  # HAProxy did not open it (a header it does not take): its first statement is refused

    @property
    def no(self) -> int:
        return self.header.no

    def lines(self, first: str) -> list[Line]:
        return [ln for ln in self.body if ln.words[0] == first]

    def where(self) -> str:
        return f"{self.kind} {self.name}".strip()

    def chain(self) -> list[Section]:
        """The defaults sections this one inherits from, outermost first, then itself."""
        out: list[Section] = []
        s: Section | None = self
        while s is not None:
            out.append(s)
            s = s.parent
        return out[::-1]

    def doubts(self) -> list[Doubt]:
        """Why this section's lines (or its defaults') might not be what HAProxy puts in it."""
        return [d for s in self.chain() for d in (*s.header.doubts, *s.tail)]


def _header(words: list[str]) -> tuple[str, str | None, str | None]:
    """Name, ``from`` reference, and what HAProxy 2.6 makes of a header it does not take as written: ``"header"``
    (refused there: a proxy without a name, ``defaults X from`` with nothing after) or ``"body"`` (the proxy is
    not opened, so the first statement after it is refused: ``backend be extra``, ``backend be from``)."""
    kind, rest = words[0], words[1:]
    if kind == "defaults":  # `defaults a b c` is named `a`: HAProxy ignores the rest
        if len(rest) >= 2 and rest[1] == "from":
            return rest[0], rest[2] if len(rest) > 2 else None, None if len(rest) > 2 else "header"
        if len(rest) >= 2 and rest[0] == "from":
            return "", rest[1], None
        return (rest[0] if rest else ""), None, None
    if not rest:
        return "", None, "header"
    if len(rest) == 1:
        return rest[0], None, None
    if len(rest) == 3 and rest[1] == "from":
        return rest[0], rest[2], None
    return rest[0], None, "body"


def parse_sections(lines: list[Line]) -> tuple[list[Section], list[Finding]]:
    """The sections of a file's lines, each proxy linked to its defaults; and what HAProxy refuses in headers."""
    sections = [Section("", "", Line(0, []))]  # statements before the first section header
    defaults: list[Section] = []
    proxies: list[Section] = []
    refused: list[Finding] = []

    def refuse(ln: Line, why: str) -> None:
        refused.append(Finding(ln.no, Code.CONFIG_REFUSED, f"HAProxy refuses this file: {why}"))

    for ln in lines:
        words = ln.words
        if words[0] not in SECTIONS:
            if sections[-1].unopened and not sections[-1].body:
                refuse(ln, f"`{' '.join(sections[-1].header.words)}` (line {sections[-1].no}) opened no section: "
                       "a proxy header is `<kind> <name> [from <defaults>]`")
            sections[-1].body.append(ln)
            continue
        if ln.doubts:
            sections[-1].tail += ln.doubts
        sec = Section(words[0], words[1] if len(words) > 1 else "", ln)
        if sec.kind == "defaults" or sec.kind in PROXIES:
            sec.name, ref, problem = _header(words)
            if problem == "header":
                refuse(ln, f"`{' '.join(words)}`: expected `{sec.kind} <name> [from <defaults>]`")
            sec.unopened = problem == "body"
            if ref is not None:
                named = [d for d in defaults if d.name == ref]
                if len(named) != 1:
                    refuse(ln, f"`from {ref}`: " + ("no defaults section of that name before this line" if not named
                           else "defaults sections at lines " + ", ".join(str(d.no) for d in named) + " share it"))
                sec.parent = named[-1] if named else None
            elif sec.kind in PROXIES:
                sec.parent = defaults[-1] if defaults else None
            if sec.kind == "defaults":
                defaults.append(sec)
            else:
                clash = next((p for p in proxies if p.name == sec.name and _CAPS[p.kind] & _CAPS[sec.kind]
                              and not p.header.doubts and not ln.doubts), None)
                if clash is not None:
                    refuse(ln, f"{sec.where()} has the name of {clash.where()} (line {clash.no})")
                proxies.append(sec)
        sections.append(sec)
    return sections, refused
