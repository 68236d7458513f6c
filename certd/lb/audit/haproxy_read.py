"""Reading a haproxy.cfg into lines of words as HAProxy 2.6 does, and what it refuses or leaves to start-up.

The audit is only as good as its reading: a word split differently from
HAProxy's is a keyword judged that HAProxy never sees, or one it sees that
the audit missed. So the rules here are HAProxy's (configuration.txt 2.2 to
2.4), each tried with ``haproxy -c`` on the Debian 12 build:

- a line ends at LF, or at a CR right after a word or inside quotes (the
  rest is dropped); words are separated by runs of space, tab, VT or FF, in
  which (and at the start of the line) a CR is one more blank: ``\rbackend
  x`` opens a section. Python's ``isspace`` separates more: HAProxy keeps
  ``\x1c`` or ``\x85`` inside a word;
- ``#`` outside quotes ends the line, also in the middle of a word;
- single quotes take everything literally; double quotes protect blanks and
  ``#`` and expand ``$NAME``/``${NAME}`` from the environment; unquoted ``$``
  is a plain character (``ca-file $CA`` opens a file named ``$CA``);
- backslash: ``\\ \\# \\' \\" \\<space>`` are the character, ``\\n \\r \\t
  \\xNN`` what C means by them, ``\\$`` a dollar inside double quotes only;
  before any other character the backslash stays;
- HAProxy refuses: a NUL byte anywhere (even in a comment), a last line
  without LF, an unmatched quote, a bad ``\\x`` sequence, more than 64 words,
  ``.if`` blocks that do not match, nested 100 deep, an unknown ``.keyword``
  and an ``.alert`` it reaches; these are ``config-refused`` findings.

What cannot be known from the file is not guessed: a word with an
environment variable, and a line inside a ``.if`` whose condition is not a
literal number, carry a ``Doubt``; whatever rests on them is UNKNOWN. ``.if
0``/``.if 1`` (and ``!``, and the empty condition, which is false) are
evaluated, as HAProxy does before anything else: a line in a branch not taken
is not there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from certd.lb.audit.findings import Code, Doubt, Finding

__all__ = ["MAX_WORDS", "Line", "Reading", "read_haproxy", "split_words"]

MAX_WORDS = 64  # HAProxy: "too many words, truncating after word 64" is fatal
_MAX_NESTED = 100  # HAProxy: "too many nested '.if', max is 100"
_BLANKS = " \t\v\f"
_PLAIN = re.compile(r"[^ \t\v\f\r\"'\\#$]+")  # characters with no meaning to HAProxy's word splitter
_SIMPLE = re.compile(r"[^\"'\\#$\r\v\f\x00]*")  # no quote, escape, comment, variable, CR, VT, FF or NUL
_SPACES = re.compile(r"[ \t]+")
_QUOTED = {'"': re.compile(r'[^"\\$\r]+'), "'": re.compile(r"[^'\r]+")}  # the same inside quotes
_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_ESCAPED = {" ": " ", "\t": "\t", "\\": "\\", "#": "#", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
_LITERAL = re.compile(r"!*[0-9]+")
_DIRECTIVES = frozenset({".if", ".elif", ".else", ".endif", ".diag", ".notice", ".warning", ".alert"})


@dataclass
class Line:
    """One statement HAProxy reads: its number, its words, and why what it says may not be what HAProxy uses."""

    no: int
    words: list[str]
    doubts: list[Doubt] = field(default_factory=list)


@dataclass
class Reading:
    """The lines HAProxy would read (``.if 0`` branches left out), and the reasons it would refuse the file."""

    lines: list[Line]
    refused: list[Finding]


@dataclass
class _Words:
    words: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    error: str | None = None


def _variable(raw: str, i: int, out: _Words) -> tuple[str, int]:
    """The ``$NAME``/``${NAME...}`` at ``raw[i]`` (inside double quotes): its text, kept as written, and the end."""
    if raw.startswith("${", i):
        close = raw.find("}", i)
        m = _NAME.match(raw, i + 2)
        if close < 0 or not m:
            out.error = f"forbidden or unterminated environment variable name at position {i}"
            return "", len(raw)
        out.env.append(m.group())
        return raw[i:close + 1], close + 1
    m = _NAME.match(raw, i + 1)
    if not m or m.group().startswith("."):
        out.error = f"forbidden first character in environment variable name at position {i}"
        return "", len(raw)
    out.env.append(m.group())
    return raw[i:m.end()], m.end()


def _escape(raw: str, i: int, quote: str | None, out: _Words) -> tuple[str, int]:
    """What the backslash at ``raw[i]`` stands for (outside single quotes), and where reading goes on."""
    nxt = raw[i + 1] if i + 1 < len(raw) else ""
    if nxt in _ESCAPED and nxt:
        return _ESCAPED[nxt], i + 2
    if nxt == "$" and quote == '"':
        return "$", i + 2
    if nxt == "x":
        digits = raw[i + 2:i + 4]
        if len(digits) == 2 and all(c in "0123456789abcdefABCDEF" for c in digits):
            return chr(int(digits, 16)), i + 4
        out.error = f"truncated or invalid hexadecimal sequence at position {i}"
        return "", len(raw)
    return "\\", i + 1  # kept, and the next character read as it is


def _skip_blanks(raw: str, i: int) -> int:
    """Past the run of blanks at ``i``: a CR within one (or at the line's start) is a blank to HAProxy."""
    while i < len(raw) and raw[i] in _BLANKS + "\r":
        i += 1
    return i


def split_words(raw: str) -> _Words:
    """HAProxy's words of one line (see the module docstring); ``error`` is why HAProxy refuses the line."""
    out = _Words()
    if _SIMPLE.fullmatch(raw):  # most lines: words are what space and tab separate
        out.words = [w for w in _SPACES.split(raw) if w]
        if len(out.words) > MAX_WORDS:
            out.error = f"too many words ({len(out.words)}; HAProxy stops at {MAX_WORDS})"
        return out
    cur: list[str] = []
    started = False
    quote: str | None = None
    i, n = _skip_blanks(raw, 0), len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\r":  # not in a run of blanks (those are skipped whole): the end of the line
            break
        if quote is not None and (m := _QUOTED[quote].match(raw, i)):
            cur.append(m.group())
            i = m.end()
            continue
        if quote == "'":
            if ch == "'":
                quote = None
            else:
                cur.append(ch)
            i += 1
            continue
        if quote is None and (m := _PLAIN.match(raw, i)):
            cur.append(m.group())
            started, i = True, m.end()
            continue
        if ch == "\\":
            text, i = _escape(raw, i, quote, out)
            cur.append(text)
            started = True
        elif ch == "$" and quote == '"':
            text, i = _variable(raw, i, out)
            cur.append(text)
        elif ch == '"':
            quote = None if quote == '"' else '"'
            started, i = True, i + 1
        elif quote == '"':
            cur.append(ch)
            i += 1
        elif ch == "'":
            quote, started, i = "'", True, i + 1
        elif ch == "#":
            break
        elif ch in _BLANKS:
            if started:
                out.words.append("".join(cur))
                cur, started = [], False
            i = _skip_blanks(raw, i)
        else:  # an unquoted "$": a plain character
            cur.append(ch)
            started, i = True, i + 1
        if out.error:
            return out
    if quote is not None:
        out.error = "unmatched quote"
    elif started:
        out.words.append("".join(cur))
    out.words = [w.split("\x00", 1)[0] for w in out.words]  # "\x00" ends a C string: the word stops there
    if len(out.words) > MAX_WORDS:
        out.error = f"too many words ({len(out.words)}; HAProxy stops at {MAX_WORDS})"
    return out


@dataclass
class _Block:
    """One ``.if`` level: whether its current branch is read, and the doubt its lines carry."""

    line: int
    outer_dropped: bool
    outer_doubt: Doubt | None
    dropped: bool = False
    doubt: Doubt | None = None
    taken: bool = False  # a branch whose condition is a literal true was read: the rest are not
    unknown: bool = False  # a branch with an unknown condition came before
    else_seen: bool = False


def _literal(words: list[str], env: list[str]) -> bool | None:
    """A condition HAProxy decides without the environment: the empty one, ``0``, ``1``, ``!0``; else None."""
    cond = " ".join(words).strip()
    if env:
        return None
    if not cond:
        return False
    if not _LITERAL.fullmatch(cond):
        return None
    digits = cond.lstrip("!")
    negations = len(cond) - len(digits)
    return (int(digits) != 0) != (negations % 2 == 1)


class _Conditions:
    """HAProxy's ``.if``/``.elif``/``.else``/``.endif`` stack, with refusals where HAProxy has them."""

    def __init__(self, refuse: list[Finding]) -> None:
        self.stack: list[_Block] = []
        self.refuse = refuse

    @property
    def dropped(self) -> bool:
        return bool(self.stack) and self.stack[-1].dropped

    @property
    def doubt(self) -> Doubt | None:
        return self.stack[-1].doubt if self.stack else None

    def _branch(self, b: _Block, no: int, cond: bool | None, text: str) -> None:
        """Whether the branch opened at line ``no`` is read (True), not read (False) or not known (None)."""
        if b.outer_dropped or b.taken or cond is False:
            b.dropped, b.doubt = True, None
        elif cond is None or b.unknown:
            b.dropped, b.unknown = False, True
            what = f"`{text}`" if text.startswith(".if") else f"`{text}` after `.if` at line {b.line}"
            b.doubt = Doubt(no, Code.CONDITIONAL, f"inside {what}, a condition HAProxy decides at start-up "
                            "(environment, version, features): the audit cannot tell whether this line is read")
        else:
            b.dropped, b.taken, b.doubt = False, True, b.outer_doubt

    def directive(self, line: Line, env: list[str]) -> None:
        kw, rest, no = line.words[0], line.words[1:], line.no
        text = " ".join(line.words)
        if kw == ".if":
            if len(self.stack) + 1 >= _MAX_NESTED:
                self._refused(no, f"`.if` nested {len(self.stack) + 1} deep (HAProxy's limit is {_MAX_NESTED})")
            block = _Block(no, self.dropped, self.doubt)
            self.stack.append(block)
            self._branch(block, no, _literal(rest, env), text)
        elif kw in (".elif", ".else", ".endif") and not self.stack:
            self._refused(no, f"`{kw}` without a matching `.if`")
        elif kw == ".endif":
            self.stack.pop()
        elif kw in (".elif", ".else"):
            block = self.stack[-1]
            if block.else_seen:
                self._refused(no, f"`{kw}` after `.else`")
            block.else_seen = block.else_seen or kw == ".else"
            self._branch(block, no, True if kw == ".else" else _literal(rest, env), text)
        elif kw == ".alert" and not self.dropped:
            if self.doubt is None:
                self._refused(no, "`.alert` stops HAProxy when it reaches it")
            else:
                self.refuse.append(Finding(no, Code.CONDITIONAL, "HAProxy stops at this `.alert` if it reads it: "
                                           f"{self.doubt.why}", doubt=self.doubt.why))

    def _refused(self, no: int, why: str) -> None:
        self.refuse.append(Finding(no, Code.CONFIG_REFUSED, f"HAProxy refuses this file: {why}"))

    def end(self) -> None:
        for block in self.stack:
            self._refused(block.line, "this `.if` has no `.endif`")


def read_haproxy(text: str) -> Reading:
    """The lines of ``text`` HAProxy would read, each with its doubts, and the reasons HAProxy would refuse it."""
    refused: list[Finding] = []
    lines: list[Line] = []
    conditions = _Conditions(refused)
    raws = text.split("\n")
    if raws and raws[-1] == "":
        raws.pop()
    elif raws:
        refused.append(Finding(len(raws), Code.CONFIG_REFUSED, "HAProxy refuses this file: its last line has no "
                               "line feed (\"file might have been truncated\", fatal since HAProxy 2.3)"))
    nul = next((no for no, raw in enumerate(raws, 1) if "\x00" in raw), None)
    if nul is not None:
        refused.append(Finding(nul, Code.CONFIG_REFUSED, "HAProxy refuses this file: a NUL byte (\"stray NUL "
                               "character\"); a file with one is corrupt or crafted"))
    for no, raw in enumerate(raws, 1):
        split = split_words(raw)
        if split.error:  # refused, and its words are not HAProxy's: nothing else is judged from them
            refused.append(Finding(no, Code.CONFIG_REFUSED, f"HAProxy refuses this line: {split.error}"))
            continue
        if not split.words:
            continue
        line = Line(no, split.words)
        if split.words[0].startswith("."):
            if split.words[0] in _DIRECTIVES:
                conditions.directive(line, split.env)
            elif not conditions.dropped:
                refused.append(Finding(no, Code.CONFIG_REFUSED, f"HAProxy refuses this file: unknown directive "
                                       f"`{split.words[0]}`"))
            continue
        if conditions.dropped:
            continue
        if conditions.doubt is not None:
            line.doubts.append(conditions.doubt)
        if split.env:
            names = ", ".join(f"${name}" for name in dict.fromkeys(split.env))
            line.doubts.append(Doubt(no, Code.ENVIRONMENT, f"takes {names} from HAProxy's environment, which the "
                                     "audit cannot see"))
        lines.append(line)
    conditions.end()
    return Reading(lines, refused)
