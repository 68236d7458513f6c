"""``haproxy`` target: swap the certificate in a running HAProxy over its runtime API, without a reload.

Why the runtime API and not a reload: a reload forks new workers and drains
the old ones, while ``set ssl cert`` + ``commit ssl cert`` replaces the
certificate in place; the next handshake gets the new one and the process
(and its connections, stick tables and counters) stays as it was.

The sequence, one command per connection (HAProxy's non-interactive mode
answers one command and closes, so EOF ends each answer):

1. ``set ssl cert <path> <<`` with the key + full chain as payload, ended by
   an empty line; HAProxy opens a transaction for ``<path>``.
2. ``commit ssl cert <path>``; HAProxy swaps the certificate everywhere it
   uses ``<path>`` (every ``bind ... crt`` and every crt-list line).
3. ``show ssl cert <path>`` must report the serial we sent, so a commit that
   "succeeded" on some other object is caught here rather than at verify.

If step 1 or 2 answers anything but success we send ``abort ssl cert
<path>``: HAProxy allows one open transaction at a time, and leaving ours
open would block every later rotation (by us or by an operator). For the
same reason we never ``set`` while a transaction on another certificate is
open (HAProxy 2.6 would put our payload into it), and rotations through one
socket are serialised within this process.

``cert`` is the name HAProxy knows the certificate by: exactly the path in
its ``crt`` / crt-list line, which is normally certd's stable
``combined.pem``. certd has already published the same bytes there, so a
restart of HAProxy loads the same certificate we pushed over the socket.
Nothing here ever echoes the payload: answers are quoted, PEM never is.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from certd.config.model import HaproxyDeployConfig
from certd.deploy.base import DeployContext
from certd.deploy.haproxy_guard import GUARD
from certd.deploy.haproxy_runtime import RuntimeApi
from certd.errors import DeployError, TargetAbsent
from certd.pki.certs import load_pem_certs

__all__ = ["HaproxyTarget"]

_MAX_ANSWER = 300
_SERIAL = re.compile(r"^Serial:\s*([0-9A-Fa-f]+)\s*$", re.MULTILINE)
# HAProxy's wording for "that path is not a certificate I loaded" differs by command and version.
_LOCKED = "currently locked"  # "Operations on certificates are currently locked!"
_UNKNOWN = ("not referenced", "not found", "unknown certificate", "can't display", "no such", "didn't find")


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _socket_lock(where: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(where, threading.Lock())


def _escape(path: str) -> str:
    """HAProxy splits CLI arguments on spaces; a backslash keeps a space inside one argument."""
    return path.replace("\\", "\\\\").replace(" ", "\\ ")


def _quote(answer: str) -> str:
    """A short, single-line form of HAProxy's answer that is safe to put in an event."""
    text = " ".join(answer.split())
    if "PRIVATE KEY" in text:  # never happens with HAProxy, but an answer must never carry key material
        return "<answer withheld: it contained key material>"
    if not text:
        return "<empty answer>"
    return text if len(text) <= _MAX_ANSWER else text[:_MAX_ANSWER] + "…"


def _payload(pem: bytes) -> str:
    """The PEM without blank lines: a blank line ends a ``<<`` payload early."""
    lines = [line for line in pem.decode("ascii").splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def _is_client_certificate(leaf: x509.Certificate) -> bool:
    """A certificate HAProxy presents as a client (``crt`` on ``server`` lines): its EKU names clientAuth."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def _fingerprints(shown: str) -> set[str]:
    """The SHA-1 fingerprints ``show ssl ca-file`` lists (upper-case hex)."""
    return {m.upper() for m in re.findall(r"^SHA1 FingerPrint: ([0-9A-Fa-f]+)", shown, re.MULTILINE)}


def _is_unknown(answer: str) -> bool:
    low = answer.lower()
    return any(marker in low for marker in _UNKNOWN)


class HaproxyTarget:
    """Push the new key + chain into HAProxy through ``set/commit ssl cert`` and confirm the loaded serial."""

    def __init__(self, name: str, config: HaproxyDeployConfig) -> None:
        self.name = name
        self._config = config
        self._path = str(config.cert)
        self._timeout = config.timeout.total_seconds()
        self._api = RuntimeApi(config.socket, self._timeout, f"deploy {name}")

    def _command(self, command: str) -> str:
        """One runtime command, with HAProxy's two answers that are not about the command itself handled.

        "Operations on certificates are currently locked" means another runtime operation on certificates
        (an operator's, a commit in progress) holds HAProxy's lock for a moment: retried for up to
        ``timeout``, not taken as a refusal. No answer at all to a ``set`` or ``commit`` means HAProxy may
        have died on it (HAProxy 2.6 has been seen to crash there): checked at once, so a dead load
        balancer fails the deploy as dead instead of looking like a quiet success.
        """
        deadline = time.monotonic() + self._timeout
        delay = 0.05
        while True:
            answer = self._api.command(command)
            if _LOCKED not in answer.lower() or time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        if not answer.strip() and command.startswith(("set ", "commit ")):
            self._raise_if_dead(command)
        return answer

    def _raise_if_dead(self, command: str) -> None:
        verb = " ".join(command.split()[:3])
        try:
            info = self._api.command("show info\n")
        except (TargetAbsent, DeployError) as exc:
            raise DeployError(f"deploy {self.name}: HAProxy stopped answering after `{verb}` and its runtime socket "
                              f"{self._config.socket} no longer works ({exc}): HAProxy crashed or was stopped; "
                              "its listeners are down until it is started again") from exc
        if "Pid:" not in info:
            raise DeployError(f"deploy {self.name}: HAProxy stopped answering after `{verb}`: `show info` on "
                              f"{self._config.socket} answers {_quote(info)}: HAProxy crashed or was stopped")
        raise DeployError(f"deploy {self.name}: HAProxy gave no answer to `{verb}` (it is still running)")

    # -- the steps -----------------------------------------------------------------
    def _abort(self) -> None:
        """Close our transaction if one is open; HAProxy answers harmlessly if there is none (or it is not ours)."""
        with contextlib.suppress(DeployError):  # the original failure is what the operator needs to see
            self._command(f"abort ssl cert {_escape(self._path)}\n")

    def _unknown_path(self, answer: str) -> DeployError:
        return DeployError(
            f"deploy {self.name}: HAProxy does not know a certificate named {self._path} "
            f"(cert must be the exact path in HAProxy's crt / crt-list line, usually certd's combined.pem): "
            f"{_quote(answer)}",
            retryable=False,
        )

    def _check_crt_list(self) -> str:
        """Say how the certificate reaches the crt-list; refuse if the crt-list does not reference it.

        ``set ssl cert`` updates every crt-list line that uses the path, so the only thing that can go
        wrong is a crt-list that does not mention the path at all (then this target would rotate some
        other listener, or nothing).
        """
        crt_list = str(self._config.crt_list)
        answer = self._command(f"show ssl crt-list {_escape(crt_list)}\n")
        entries = set()
        for line in answer.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            first = line.split()[0]
            entries.add(re.sub(r":\d+$", "", first))  # `-n` style "path:line" too
        if self._path in entries:
            return f" (used by crt-list {crt_list})"
        if _is_unknown(answer):
            # HAProxy does not know that crt-list by this name; the certificate itself must still be known.
            shown = self._command(f"show ssl cert {_escape(self._path)}\n")
            if _SERIAL.search(shown) is None:
                raise self._unknown_path(shown)
            return f" (crt-list {crt_list} not known to HAProxy by that name; certificate {self._path} is)"
        raise DeployError(
            f"deploy {self.name}: crt-list {crt_list} does not reference {self._path}; "
            f"HAProxy lists: {_quote(' '.join(sorted(entries)))}",
            retryable=False,
        )

    def _open_transaction(self) -> str | None:
        """The certificate path of the runtime API's open transaction, if any (``show ssl cert`` marks it ``*``)."""
        for line in self._command("show ssl cert\n").splitlines():
            if line.startswith("*"):
                return line[1:].strip()
        return None

    def _wait_for_no_foreign_transaction(self) -> None:
        """Wait (up to ``timeout``) until no transaction on another certificate is open.

        HAProxy has one transaction slot, and 2.6 answers ``set ssl cert <ours>`` while another path's
        transaction is open by silently putting our payload into *that* transaction. So we never send
        ``set`` while someone else (an operator, another tool) is mid-rotation, and we never touch their
        transaction. An open transaction on our own path is a leftover of an interrupted rotation of this
        very certificate: ``set`` replaces its payload with the current generation, which is what we want.
        """
        deadline = time.monotonic() + self._timeout
        while True:
            open_path = self._open_transaction()
            if open_path is None or open_path == self._path:
                return
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"deploy {self.name}: HAProxy has an open runtime-API transaction on {open_path} "
                    f"(another rotation in progress?) for over {self._timeout:g}s; left it untouched"
                )
            time.sleep(0.1)

    def deploy(self, ctx: DeployContext) -> str:
        # One rotation per HAProxy at a time from this process: daemon workers renewing two certificates
        # served by the same HAProxy would otherwise fight over its single transaction slot.
        with _socket_lock(self._config.socket):
            return self._deploy_locked(ctx)

    def _deploy_locked(self, ctx: DeployContext) -> str:
        path = _escape(self._path)
        via = self._check_crt_list() if self._config.crt_list is not None else ""
        self._wait_for_no_foreign_transaction()

        answer = self._command(f"set ssl cert {path} <<\n{_payload(ctx.combined_pem)}\n")
        low = answer.lower()
        if "transaction created" not in low and "transaction updated" not in low:
            self._abort()
            if _is_unknown(answer):
                raise self._unknown_path(answer)
            raise DeployError(f"deploy {self.name}: HAProxy refused set ssl cert {self._path}: {_quote(answer)}")
        if f"for certificate {self._path}!" not in answer:
            # Someone opened a transaction between our check and our set, and HAProxy put our payload into
            # it: that transaction is spoiled for its owner too, so abort it rather than let it be committed.
            other = self._open_transaction()
            if other is not None and other != self._path:
                with contextlib.suppress(DeployError):
                    self._command(f"abort ssl cert {_escape(other)}\n")
            raise DeployError(
                f"deploy {self.name}: HAProxy applied set ssl cert {self._path} to another certificate's "
                f"transaction ({_quote(answer)}); aborted it, nothing was committed"
            )

        answer = self._command(f"commit ssl cert {path}\n")
        if "success" not in answer.lower() or "error" in answer.lower():
            self._abort()
            raise DeployError(f"deploy {self.name}: HAProxy refused commit ssl cert {self._path}: {_quote(answer)}")

        shown = self._command(f"show ssl cert {path}\n")
        match = _SERIAL.search(shown)
        if match is None:
            raise DeployError(
                f"deploy {self.name}: after commit, show ssl cert {self._path} shows no serial: {_quote(shown)}"
            )
        loaded = int(match.group(1), 16)
        if loaded != int(ctx.serial, 16):
            raise DeployError(
                f"deploy {self.name}: after commit HAProxy has serial {loaded:x} loaded for {self._path}, "
                f"expected {ctx.serial}"
            )
        if _is_client_certificate(ctx.leaf):
            GUARD.client_cert_committed(self._config.socket, self._pid())
        return f"haproxy: committed serial {ctx.serial} to {self._path}{via} via {self._config.socket}"

    def _pid(self) -> int:
        """The running HAProxy's pid (``show info``): a reload or restart is a new process."""
        match = re.search(r"^Pid: (\d+)", self._command("show info\n"), re.MULTILINE)
        return int(match.group(1)) if match else 0

    def _ca_file_in_use(self, path: Path, where: str) -> set[str]:
        """Refuse a push HAProxy would accept and then not apply.

        Measured on HAProxy 2.6: a committed ca-file reaches a ``server`` line
        only when that line also has a client certificate (``crt``); without
        one ``show ssl ca-file`` says ``Status: Unused``, the commit succeeds,
        and the servers keep verifying against the old CAs until a reload --
        exactly when a CA rotation needs the new one.
        """
        shown = self._command(f"show ssl ca-file {where}\n")
        loaded = _fingerprints(shown)
        if re.search(r"^Status: Unused", shown, re.MULTILINE):
            raise DeployError(
                f"deploy {self.name}: HAProxy has ca-file {path} loaded but no server or bind line uses it live "
                "(Status: Unused): HAProxy applies a new ca-file only to server lines that also have a client "
                "certificate; add `crt FILE` to the server lines that pin it (certd haproxy-config --client-cert "
                "NAME) or reload HAProxy after each bundle change", reason="CaFileNotLive")
        return loaded

    def push_ca_file(self, path: Path, pem: bytes) -> str | None:
        """Replace a ``ca-file`` HAProxy loaded (``set``/``commit ssl ca-file``) when it is ours; no reload.

        New TLS connections to the servers that pin it (and their health
        checks) verify against the new bundle from the commit on. certd has
        already written the same bytes to the file, so a restart loads them too.
        """
        if self._config.ca_file is None or Path(self._config.ca_file) != Path(path):
            return None
        where = _escape(str(path))
        pushed = {c.fingerprint(hashes.SHA1()).hex().upper() for c in load_pem_certs(pem)}  # noqa: S303 - HAProxy shows SHA1
        with _socket_lock(self._config.socket):
            if self._ca_file_in_use(path, where) == pushed:  # every runtime change is a risk (2.6 crashed on one)
                return f"haproxy: ca-file {path} already holds these {len(pushed)} certificate(s); nothing pushed"
            pid = self._pid()
            if GUARD.ca_update_would_crash(self._config.socket, pid):
                raise DeployError(
                    f"deploy {self.name}: not pushing ca-file {path}: HAProxy (pid {pid}) crashes on a ca-file update "
                    "after the client certificate its server lines pin was replaced at runtime (haproxy#3165, seen "
                    "on 2.6.12); the bundle is written on disk: reload HAProxy to load it", reason="HaproxyWouldCrash")
            answer = self._command(f"set ssl ca-file {where} <<\n{_payload(pem)}\n")
            if "transaction created" not in answer.lower() and "transaction updated" not in answer.lower():
                with contextlib.suppress(DeployError):
                    self._command(f"abort ssl ca-file {where}\n")
                raise DeployError(f"deploy {self.name}: HAProxy refused set ssl ca-file {path}: {_quote(answer)}")
            answer = self._command(f"commit ssl ca-file {where}\n")
            if "success" not in answer.lower() or "error" in answer.lower():
                with contextlib.suppress(DeployError):
                    self._command(f"abort ssl ca-file {where}\n")
                raise DeployError(f"deploy {self.name}: HAProxy refused commit ssl ca-file {path}: {_quote(answer)}")
            shown = self._command(f"show ssl ca-file {where}\n")
            GUARD.ca_committed(self._config.socket, pid)
        # Confirmed by fingerprint, not by count: a CA rotation promotes only once every sink holds the new CA.
        loaded = _fingerprints(shown)
        if pushed - loaded:
            raise DeployError(f"deploy {self.name}: after commit, HAProxy's ca-file {path} holds {len(loaded)} "
                              f"certificate(s), missing {len(pushed - loaded)} of the {len(pushed)} pushed")
        return f"haproxy: ca-file {path} now holds {len(loaded)} certificate(s) via {self._config.socket}"


def build(name: str, config: HaproxyDeployConfig) -> HaproxyTarget:
    return HaproxyTarget(name, config)
