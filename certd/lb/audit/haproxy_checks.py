"""The pitfalls of one HAProxy server line and of one TLS edge, with the doubts their judgement rests on.

A judgement rests on lines: the server line, the ``default-server`` lines
before it, the global ``ssl-server-verify``, the ``option httpchk`` of its
section and defaults. Each such line's doubts (a ``.if``, an environment
variable, an unknown keyword) are collected; so is, in a file without a
global section, each setting the server does not state (``unseen-context``):
another ``-f`` file decides it. ``settle`` then makes the findings UNKNOWN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from certd.lb.audit.findings import (
    MAX_PINNED,
    OLD_TLS,
    SYSTEM_CA,
    Code,
    Doubt,
    Finding,
    TlsBackend,
    count_certificates,
    unreadable,
)
from certd.lb.audit.haproxy_options import Options
from certd.lb.audit.haproxy_read import Line
from certd.lb.audit.haproxy_sections import Section

__all__ = ["Context", "header_findings", "httpchk", "server_findings", "tls_min_findings"]

_FROM_FILES = "another file loaded before it (`-f`) decides it, and the audit did not see that file"


@dataclass
class Context:
    """What every judgement of one file shares: where it is, its global lines, the TLS backends found so far."""

    path: Path
    fragment: bool  # no global section: one of several -f files
    globals: list[Line]
    backends: list[TlsBackend]
    counted: dict[Path, int | OSError | ValueError] = field(default_factory=dict)  # CA files read once per audit

    def global_lines(self, keyword: str) -> list[Line]:
        return [ln for ln in self.globals if ln.words[0] == keyword]

    def certificates(self, ca: Path) -> int:
        """``count_certificates``, once per file (thousands of servers pin the same one); raises as it does."""
        if ca not in self.counted:
            try:
                self.counted[ca] = count_certificates(ca)
            except (OSError, ValueError) as exc:
                self.counted[ca] = exc
        result = self.counted[ca]
        if isinstance(result, int):
            return result
        raise result


def _unseen(sec: Section, ctx: Context) -> bool:
    """The proxy's defaults are in a file not seen: a fragment, and no defaults section of this file applies."""
    return ctx.fragment and sec.chain()[0].kind != "defaults"


def _missing(ln: Line, keys: list[str], where: str) -> Doubt:
    listed = ", ".join(f"`{k}`" for k in keys)
    return Doubt(ln.no, Code.UNSEEN, f"{listed} not stated for this server, and {where}: {_FROM_FILES}")


def httpchk(sec: Section) -> tuple[bool | None, list[Doubt]]:
    """Whether the section (or its defaults) says ``option httpchk`` last, or ``no option httpchk`` (None:
    neither); and the doubts of those lines. Once per section: a section may hold thousands of servers."""
    said: bool | None = None
    doubts: list[Doubt] = []
    for owner in sec.chain():
        for line in owner.body:
            if line.words[:2] == ["option", "httpchk"] or line.words[:3] == ["no", "option", "httpchk"]:
                said = line.words[0] == "option"
                doubts += line.doubts
    return said, doubts


def server_findings(ctx: Context, sec: Section, ln: Line, label: str, addr: str, opts: Options,
                    checked: tuple[bool | None, list[Doubt]]) -> tuple[list[Finding], list[Doubt]]:
    """The pitfalls of one server (or server-template) line, and the doubts they rest on (``checked``: its
    section's ``httpchk``)."""
    found: list[Finding] = []
    httpchk, said = checked
    doubts = [*sec.doubts(), *opts.doubts, *said]
    missing = [] if "ssl" in opts else ["ssl"]
    missing += [] if "check" in opts or "check" in opts.negated else ["check"]
    _checks(found, ln, label, opts, bool(httpchk))
    if httpchk is None and "check" in opts:
        missing.append("option httpchk")
    if "ssl" in opts:
        missing += _verify(found, ctx, ln, label, addr, opts, doubts, _unseen(sec, ctx))
        if "check" in opts and "check-sni" not in opts:
            missing.append("check-sni")
    else:
        found.append(Finding(ln.no, Code.PLAINTEXT_BACKEND, f"{label}: no `ssl`: traffic to {addr} is not encrypted"))
    if missing and _unseen(sec, ctx):
        doubts.append(_missing(ln, missing, f"this file has no global section and no defaults section for "
                               f"{sec.where()}"))
    return found, doubts


def _verify(found: list[Finding], ctx: Context, ln: Line, label: str, addr: str, opts: Options,
            doubts: list[Doubt], unseen: bool) -> list[str]:
    """The verification findings of a TLS server; the settings it relies on without stating them."""
    missing: list[str] = []
    stated = opts.get("verify")
    if stated not in (None, "none", "required") and not any(d.code is Code.ENVIRONMENT for d in doubts):
        return missing  # HAProxy refuses the value (opts.refused says so): nothing it would do to judge
    server_verify = ctx.global_lines("ssl-server-verify")
    global_verify = server_verify[-1] if server_verify else None
    if stated is None:
        doubts += [d for g in server_verify for d in g.doubts]
        missing.append("verify")
        if ctx.fragment and global_verify is None and not unseen:  # else said with the defaults' doubt
            doubts.append(Doubt(ln.no, Code.UNSEEN, "no `verify` for this server and no global section in this "
                                f"file: `ssl-server-verify` there would decide it; {_FROM_FILES}"))
    if global_verify is not None and (len(global_verify.words) != 2 or global_verify.words[1] not in ("none",
                                                                                                      "required")):
        found.append(Finding(global_verify.no, Code.CONFIG_REFUSED, "HAProxy refuses this line: "
                             "`ssl-server-verify` takes `none` or `required`"))
    verify = stated or (global_verify.words[1] if global_verify and len(global_verify.words) > 1 else "required")
    sni = opts.get("sni")
    literal = sni[4:-1] if sni and sni.startswith("str(") and sni.endswith(")") else None
    name = opts.get("verifyhost") or literal
    endpoint = addr if addr.rpartition(":")[2].isdigit() else f"{addr}:443"
    ca = _ca_path(ctx, opts.get("ca-file"), doubts)
    ctx.backends.append(TlsBackend(ln.no, label, (endpoint,), literal, name if verify != "none" else None, ca,
                                   verify != "none", client_crt="crt" in opts))
    if verify == "none":
        why = ("`verify none`" if stated else
               f"no `verify` and the global `ssl-server-verify none` (line {global_verify.no if global_verify else 0})")
        source = opts.source.get("verify")
        if stated and source is not None and source is not ln:
            why += f" (from default-server, line {source.no})"
        found.append(Finding(ln.no, Code.VERIFY_NONE, f"{label}: {why}: HAProxy accepts any certificate {addr} "
                             "presents, so anyone on the path can read and change the re-encrypted traffic; add "
                             "`verify required ca-file <the issuer's bundle_file>`"))
        return missing
    if ca is None:
        missing.append("ca-file")
    source = opts.source.get("ca-file")
    if not (source and "$" in str(ca) and any(d.code is Code.ENVIRONMENT for d in source.doubts)):
        _ca_file(ctx, found, ln, label, ca)  # a path from the environment is not read: its doubt says why
    if sni is None and "verifyhost" not in opts:  # a dynamic sni (req.hdr(host)) is checked too
        missing.append("sni")
        found.append(Finding(ln.no, Code.NO_NAME_CHECK, f"{label}: neither `sni str(NAME)` nor `verifyhost NAME`: "
                             "HAProxy verifies the chain but not the name, so any certificate the CA file trusts "
                             "passes (another backend's, or any website's with the system store)"))
    if sni is None:
        found.append(Finding(ln.no, Code.NO_SNI, f"{label}: no `sni`: HAProxy sends no server name, so a backend "
                             "serving several certificates answers with its default one; add `sni str(<backend "
                             "name>)`"))
    return missing


def _ca_path(ctx: Context, value: str | None, doubts: list[Doubt]) -> Path | str | None:
    if value is None or value == SYSTEM_CA:
        return value
    path = Path(value)
    if not path.is_absolute():
        bases = ctx.global_lines("ca-base")
        doubts += [d for b in bases for d in b.doubts]
        base = Path(bases[0].words[1]) if bases and len(bases[0].words) > 1 else ctx.path.parent
        path = base / path
    return path


def _ca_file(ctx: Context, found: list[Finding], ln: Line, label: str, ca: Path | str | None) -> None:
    if ca is None:
        found.append(Finding(ln.no, Code.NO_CA_FILE, f"{label}: `verify required` without `ca-file`: HAProxy "
                             "refuses to start (\"verify is enabled by default but no CA file specified\"); point "
                             "`ca-file` at the issuer's bundle_file"))
    elif ca == SYSTEM_CA:
        found.append(Finding(ln.no, Code.SYSTEM_CA, f"{label}: `ca-file @system-ca` trusts every public CA to vouch "
                             "for this backend; pin the issuer's bundle_file (`certd bundle NAME`)"))
    else:
        assert isinstance(ca, Path)
        try:
            n = ctx.certificates(ca)
        except (OSError, ValueError) as exc:
            hint = (" (HAProxy expands `$` only inside double quotes: this is the file's name)"
                    if "$" in str(ca) else "")
            found.append(Finding(ln.no, Code.CA_FILE_UNREADABLE, f"{label}: cannot read ca-file {ca} "
                                 f"({unreadable(exc)}){hint}: what it pins is unknown"))
            return
        if n > MAX_PINNED:
            found.append(Finding(ln.no, Code.SYSTEM_CA, f"{label}: ca-file {ca} holds {n} certificates (more than "
                                 f"{MAX_PINNED}): a trust store, not a pinned bundle; pin the issuer's bundle_file"))


def _checks(found: list[Finding], ln: Line, label: str, opts: Options, httpchk: bool) -> None:
    if "check" not in opts:
        found.append(Finding(ln.no, Code.NO_CHECK, f"{label}: no `check`: HAProxy keeps sending traffic to it when "
                             "it is down; add `check check-ssl check-sni <name>` and `option httpchk GET /healthz`"))
        return
    if "ssl" in opts:
        elsewhere = "port" in opts or "addr" in opts
        if "check-ssl" not in opts and (elsewhere or "check-ssl" in opts.negated):
            how = "`no-check-ssl`" if "check-ssl" in opts.negated else "`port`/`addr` without `check-ssl`"
            found.append(Finding(ln.no, Code.CHECK_NOT_TLS, f"{label}: {how}: health checks go in clear text, so "
                                 "they do not prove the TLS service works; add `check-ssl`"))
        elif "check-sni" not in opts:
            found.append(Finding(ln.no, Code.CHECK_NO_SNI, f"{label}: no `check-sni`: health checks send no server "
                                 "name (`sni` is not used by checks), so a backend with several certificates fails "
                                 "them or answers with another one; add `check-sni <name>`"))
    if not httpchk:
        found.append(Finding(ln.no, Code.CHECK_NOT_HTTP, f"{label}: no `option httpchk` in its section: the check "
                             "only proves a connection, not that the application answers; add `option httpchk GET "
                             "/healthz`"))


def tls_min_findings(ctx: Context, sec: Section, ln: Line, opts: Options, doubts: list[Doubt]) -> list[Finding]:
    """A TLS bind's minimum version: below 1.2, or left to the build's default (a note)."""
    where = f"{sec.where()}: bind {ln.words[1] if len(ln.words) > 1 else ''}"
    forced = [k for k in ("force-sslv3", "force-tlsv10", "force-tlsv11") if k in opts]
    low = (opts.get("ssl-min-ver") or "").lower()
    if forced or low in OLD_TLS:
        what = f"`{forced[0]}`" if forced else f"`ssl-min-ver {opts.get('ssl-min-ver')}`"
        return [Finding(ln.no, Code.TLS_BELOW_12, f"{where}: {what} accepts TLS below 1.2 (deprecated by RFC "
                        "8996); use `ssl-min-ver TLSv1.2`")]
    if not low and not {"no-tlsv10", "no-tlsv11"} <= set(opts.values):
        if ctx.fragment:
            doubts.append(Doubt(ln.no, Code.UNSEEN, "no `ssl-min-ver` on this bind and no global section in "
                                f"this file: its `ssl-default-bind-options` would set it; {_FROM_FILES}"))
        return [Finding(ln.no, Code.TLS_MIN_IMPLICIT, f"{where}: no `ssl-min-ver` here or in "
                        "`ssl-default-bind-options`: HAProxy >= 2.2 defaults to TLSv1.2, older versions accept "
                        "TLS 1.0; state `ssl-min-ver TLSv1.2`")]
    return []


def header_findings(ctx: Context, sec: Section, backends: dict[str, Section]) -> tuple[list[Finding], list[Doubt]]:
    """The headers a TLS edge should set (in itself, its backends, or their named defaults), and the doubts."""
    doubts = list(sec.doubts())
    modes = [ln for owner in sec.chain() for ln in owner.lines("mode") if len(ln.words) > 1]
    if modes:
        doubts += modes[-1].doubts
        if modes[-1].words[1] == "tcp":
            return [], doubts  # TLS passed on as a stream: no HTTP header to set, the backends' own edge does
    targets = [sec]
    for ln in sec.body:
        if ln.words[0] in ("default_backend", "use_backend") and len(ln.words) > 1 and ln.words[1] in backends:
            targets.append(backends[ln.words[1]])
    owners = [owner for t in targets for owner in t.chain()]  # named defaults carry http-response rules too
    found: list[Finding] = []
    where = sec.where()
    for header, code, message in _HEADERS:
        lines = _setting(owners, header)
        if header == "X-Request-ID":
            lines += [ln for s in owners for ln in s.lines("unique-id-header")
                      if len(ln.words) > 1 and ln.words[1].lower() == "x-request-id"]
        if lines and all(ln.doubts for ln in lines):
            doubts += [d for ln in lines for d in ln.doubts]
        if not lines:
            found.append(Finding(sec.no, code, f"{where}: {message}"))
            if _unseen(sec, ctx):
                doubts.append(Doubt(sec.no, Code.UNSEEN, f"no {header} set in this file, and {where} has no "
                                    f"defaults section here: the named defaults of {_FROM_FILES}"))
    return found, doubts


def _setting(owners: list[Section], header: str) -> list[Line]:
    """The ``http-request``/``http-response``/``http-after-response`` lines that set or add ``header``."""
    return [ln for s in owners for ln in s.body
            if len(ln.words) >= 3 and ln.words[0] in ("http-request", "http-response", "http-after-response")
            and ln.words[1] in ("set-header", "add-header") and ln.words[2].lower() == header.lower()]


_HEADERS = (
    ("Strict-Transport-Security", Code.NO_HSTS, "terminates TLS but sets no Strict-Transport-Security header: a "
     "browser can be sent to http:// again; add `http-response set-header Strict-Transport-Security "
     "\"max-age=63072000\"`"),
    ("X-Forwarded-Proto", Code.NO_FORWARDED_PROTO, "X-Forwarded-Proto is not set: backends cannot tell the client "
     "used HTTPS (redirect loops, insecure cookies), and a client-sent value passes; add `http-request set-header "
     "X-Forwarded-Proto https`"),
    ("X-Request-ID", Code.NO_REQUEST_ID, "X-Request-ID is not set: the load balancer's and the backends' logs "
     "cannot be joined; add `unique-id-format %[uuid()]` and `http-request set-header X-Request-ID "
     "%[unique-id]`"),
)
