"""Reading an nginx.conf as nginx 1.22 does: its tokenizer, a block tree built without recursion, its includes.

The tokenizer follows ``ngx_conf_read_token``: a word ends at space, tab,
CR, LF, ``;`` or ``{``; ``}`` and ``#`` are special only where a word could
start (``location /a}`` is one word); a quote opens a string only there, and
must be followed by a separator; a backslash makes the next character part
of the word, and in the value ``\\" \\' \\\\`` are that character, ``\\t \\r \\n``
what C means by them, any other pair stays as written; ``$`` then ``{`` is a
variable, not a block. Python's ``isspace`` is not used: nginx's separators
are those four (``proxy_ssl_verify<VT>on`` is one unknown directive to it).

``include`` is followed, as nginx does, at the place it stands: a relative
path from the audited file's directory (nginx's prefix is the main file's),
a pattern sorted, each file read with ``certd.inputs.read_text`` (bounded),
at most ``MAX_FILES`` files and ``MAX_INCLUDE_DEPTH`` deep. A file that
includes itself is refused (nginx 1.22 recurses until it crashes). What
cannot be read is not guessed: the level where the include stands is marked
``unseen``, and an ``include-not-read`` finding names the line.

A NUL byte in a word is a doubt: nginx compares most values as C strings,
which stop at it, and names by length, which do not.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from certd.inputs import read_text
from certd.lb.audit.findings import AuditError, Code, Doubt, Finding, unreadable

__all__ = ["MAX_FILES", "MAX_INCLUDE_DEPTH", "Directive", "Tree", "read_nginx"]

MAX_FILES = 64  # included files read in all (a conf.d/*.conf of a large estate is a few dozen)
MAX_INCLUDE_DEPTH = 8  # includes within includes
_FILE_LIMIT = 4 * 1024 * 1024
_SEPARATORS = " \t\r\n"
_IN_WORD = re.compile(r"[^ \t\r\n;{\\$]+")
_IN_QUOTES = {'"': re.compile(r'[^"\\]+'), "'": re.compile(r"[^'\\]+")}
_ESCAPE = re.compile(r"\\([\"'\\trn])")
_UNESCAPE = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}
_PATTERN = re.compile(r"[*?\[]")


@dataclass
class Directive:
    """One directive or block, where it is (``file`` None: the audited file), and why its words may mislead."""

    name: str
    args: list[str]
    line: int
    file: Path | None = None
    is_block: bool = False
    children: list[Directive] = field(default_factory=list)
    doubts: list[Doubt] = field(default_factory=list)  # this directive's own words (a NUL byte)
    unseen: list[Doubt] = field(default_factory=list)  # a block: includes at this level that were not read
    _by_name: dict[str, list[Directive]] | None = field(default=None, repr=False, compare=False)

    def own(self, name: str) -> list[Directive]:
        """Its children of that name, in order; indexed once, as every lookup of every location asks its server."""
        if self._by_name is None:
            self._by_name = {}
            for d in self.children:
                self._by_name.setdefault(d.name, []).append(d)
        return self._by_name.get(name, [])

    def where(self) -> str:
        return " ".join([self.name, *self.args])

    def at(self) -> str:
        """Its line as a message names it: ``line 5``, or ``conf.d/a.conf:5`` in an included file."""
        return f"{self.file}:{self.line}" if self.file else f"line {self.line}"


@dataclass
class Tree:
    """The audited file's directives, includes spliced in, and what the reading found on the way."""

    root: Directive
    findings: list[Finding] = field(default_factory=list)


def _unescape(raw: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPE[m.group(1)], raw) if "\\" in raw else raw


def _tokens(text: str) -> list[tuple[str, int, bool]]:
    """(token, line, is_word); ``;``, ``{`` and ``}`` are tokens when not words. ``AuditError`` as nginx refuses."""
    out: list[tuple[str, int, bool]] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch in _SEPARATORS:
            line += ch == "\n"
            i += 1
        elif ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch in ";{}":
            out.append((ch, line, False))
            i += 1
        elif ch in "\"'":
            start, j, quote = line, i + 1, ch
            while j < n and text[j] != quote:
                if m := _IN_QUOTES[quote].match(text, j):
                    j = m.end()
                else:  # a backslash: the next character is part of the string, a quote included
                    j += 2
            if j >= n:
                raise AuditError(f"line {start}: unexpected end of file in a quoted string")
            line += text.count("\n", i, j)
            out.append((_unescape(text[i + 1:j]), start, True))
            i = j + 1
            if i < n and text[i] not in _SEPARATORS + ";{)":
                raise AuditError(f"line {line}: unexpected {text[i]!r} after a quoted string")
        else:
            start, j = line, i
            while j < n:
                if m := _IN_WORD.match(text, j):
                    j = m.end()
                    continue
                c = text[j]
                if c == "\\" and j + 1 < n:
                    line += text[j + 1] == "\n"
                    j += 2
                elif c == "$":
                    j += 2 if text.startswith("${", j) else 1
                else:
                    break
            out.append((_unescape(text[i:j]), start, True))
            i = j
    return out


def _build(text: str, file: Path | None) -> list[Directive]:
    """The top-level directives of one file, blocks nested, without recursion; ``AuditError`` if unbalanced."""
    root = Directive("", [], 0, file, True)
    stack = [root]
    words: list[tuple[str, int]] = []
    for tok, line, is_word in _tokens(text):
        if is_word:
            words.append((tok, line))
            continue
        if tok == "}":
            if words or len(stack) == 1:
                raise AuditError(f"line {line}: unexpected '}}'")
            stack.pop()
            continue
        if not words:
            raise AuditError(f"line {line}: unexpected '{tok}'")
        d = Directive(words[0][0], [w for w, _ in words[1:]], words[0][1], file)
        if any("\x00" in w for w, _ in words):
            d.doubts.append(Doubt(d.line, Code.NUL_BYTE, "a NUL byte in a word: nginx compares most values as C "
                                  "strings, which end there, so what it reads is not what the file says", file))
        stack[-1].children.append(d)
        words = []
        if tok == "{":
            d.is_block = True
            stack.append(d)
    if words or len(stack) > 1:
        raise AuditError(f"unexpected end of file: {len(stack) - 1} block(s) not closed")
    return root.children


class _Reader:
    """Follows includes with bounds: files read, depth, cycles (nginx crashes on one)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.files = 0
        self.findings: list[Finding] = []

    def splice(self, block: Directive, stack: tuple[Path, ...]) -> None:
        """Replace every ``include`` under ``block`` by what it includes; iterative over blocks."""
        todo = [block]
        while todo:
            level = todo.pop()
            children: list[Directive] = []
            for d in level.children:
                if d.name == "include" and not d.is_block:
                    children += self._include(level, d, stack)
                else:
                    children.append(d)
            level.children, level._by_name = children, None
            todo += [d for d in children if d.is_block and d.file == block.file]

    def _include(self, level: Directive, d: Directive, stack: tuple[Path, ...]) -> list[Directive]:
        def unseen(why: str, code: Code = Code.INCLUDE) -> list[Directive]:
            doubt = Doubt(d.line, code, f"`include {' '.join(d.args)}`: {why}", d.file)
            level.unseen.append(doubt)
            self.findings.append(Finding(d.line, code, f"include {' '.join(d.args)}: {why}", file=d.file,
                                         doubt=None if code is Code.CONFIG_REFUSED else why))
            return []

        if len(d.args) != 1:
            return unseen("nginx takes exactly one file or pattern", Code.CONFIG_REFUSED)
        pattern = Path(d.args[0]) if Path(d.args[0]).is_absolute() else self.base / d.args[0]
        paths = ([Path(p) for p in sorted(glob.glob(str(pattern)))] if _PATTERN.search(d.args[0])
                 else [pattern])
        if len(stack) > MAX_INCLUDE_DEPTH:
            return unseen(f"included {len(stack) - 1} files deep: the audit follows {MAX_INCLUDE_DEPTH}, so what it "
                          "adds is not judged")
        spliced: list[Directive] = []
        for path in paths:
            if path.resolve() in {p.resolve() for p in stack}:
                unseen(f"{path} includes itself (through {' -> '.join(str(p) for p in stack)}): nginx recurses "
                       "until it crashes", Code.CONFIG_REFUSED)
                continue
            if self.files >= MAX_FILES:
                unseen(f"{path}: more than {MAX_FILES} included files; the audit stops reading, so what the rest "
                       "adds is not judged")
                break
            self.files += 1
            try:
                text = read_text(path, _FILE_LIMIT)
            except OSError as exc:
                unseen(f"cannot read {path} ({unreadable(exc)}): what it adds here is not judged")
                continue
            try:
                children = _build(text, path)
            except AuditError as exc:
                unseen(f"nginx cannot parse {path}: {exc}", Code.CONFIG_REFUSED)
                continue
            inner = Directive("", [], 0, path, True, children)
            self.splice(inner, (*stack, path))
            spliced += inner.children
            level.unseen += inner.unseen
        return spliced


def read_nginx(path: Path, text: str) -> Tree:
    """The directives of ``text`` (the content of ``path``) with its includes spliced in; ``AuditError`` as nginx."""
    root = Directive("", [], 0, None, True, _build(text, None))
    reader = _Reader(path.parent)
    reader.splice(root, (path,))
    return Tree(root, reader.findings)
