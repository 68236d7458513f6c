"""Config rules that look past one table: at other tables, and at this host.

``config.py`` validates each table on its own with pydantic. The rules here
need more than one table (a certificate and its issuer, its deploy targets,
its neighbours' directories) or need this host (its users, groups and file
system), so they run once every table that could be validated was. They live
in their own module because they grow with every contradiction an operator
finds, and ``config.py`` is already the models and the loader.

``cross_check`` exists so that a configuration that cannot work is refused
by ``load_config`` — and so by ``certd check-config``, every CLI command and
the daemon's reload — before any CA is contacted, instead of failing (or
issuing and discarding a certificate) on every renewal. ``check_files``
only reports referenced files that do not exist yet: warnings, since a
config is often written before its secrets are in place. ``key_file_rules``
reads ``[database] key_file`` when it exists: a garbled key is an error,
since no command could use the inventory's keys with it. ``check_secret_modes``
reports secret files (and the SQLite database) that other users can read:
warnings, shown by ``check-config`` and logged when the daemon starts, never
errors (a mode is the operator's call, and some secret stores mount 0644).

A table that failed its own validation has already been reported; references
to it are not reported again as "unknown", so one mistake gives one error.
This module knows the models only by their ``type`` tag, so ``config.py`` can
import it without a cycle.
"""

from __future__ import annotations

import grp
import pwd
import stat
from collections.abc import Mapping, Set
from pathlib import Path
from typing import TYPE_CHECKING

from certd.config.secrets import MODE_CHECKED, SCRUBBED
from certd.config.types import sqlite_file
from certd.core.durations import format_duration
from certd.core.policy import min_remaining, remaining_floor
from certd.inputs import CERT_LIMIT, KEY_LIMIT, SECRET_LIMIT, read_file
from certd.pki.keybox import KEY_HINT, parse_key
from certd.pki.keys import KeyType
from certd.places import foreign_entries, is_system_dir, unwritable

if TYPE_CHECKING:
    from certd.config.model import CertificateConfig, Config, DeployConfig, IssuerConfig

__all__ = ["check_files", "check_secret_modes", "cross_check", "key_file_rules"]

_ISSUER_KEY_TYPES: dict[str, set[KeyType]] = {
    "acme": {KeyType.ECDSA_P256, KeyType.ECDSA_P384, KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096},
    "vault": set(KeyType),
    "local-ca": set(KeyType),
}


def cross_check(
    path: Path,
    issuers: Mapping[str, IssuerConfig],
    certs: Mapping[str, CertificateConfig],
    deploys: Mapping[str, DeployConfig],
    *,
    broken_issuers: Set[str] = frozenset(),
    broken_deploys: Set[str] = frozenset(),
) -> list[str]:
    """Every cross-table and host problem, as ``<file>: <key path>: <problem>`` lines.

    ``broken_issuers`` and ``broken_deploys`` name tables that exist but
    failed their own validation: certificates referring to them get no
    second error.
    """
    errors: list[str] = []
    for name, cert in certs.items():
        where = f"{path}: certificates.{name}"
        issuer = issuers.get(cert.issuer)
        if issuer is not None:
            errors += _issuer_rules(where, cert, issuer)
        elif cert.issuer not in broken_issuers:
            known = ", ".join(sorted(issuers)) or "none configured"
            errors.append(f"{where}.issuer: unknown issuer {cert.issuer!r} (known: {known})")
        errors += _lifetime_rules(where, cert, issuer)
        for i, target in enumerate(cert.deploy):
            if target not in deploys and target not in broken_deploys:
                known = ", ".join(sorted(deploys)) or "none configured"
                errors.append(f"{where}.deploy[{i}]: unknown deploy target {target!r} (known: {known})")
        errors += _ownership_rules(where, cert)
    errors += _directory_rules(path, issuers, certs)
    return errors


def _issuer_rules(where: str, cert: CertificateConfig, issuer: IssuerConfig) -> list[str]:
    errors = []
    if cert.key not in _ISSUER_KEY_TYPES[issuer.type]:
        errors.append(f"{where}.key: issuer {cert.issuer!r} ({issuer.type}) cannot issue {cert.key}")
    if issuer.type == "acme":
        if cert.lifetime is not None:
            errors.append(f"{where}.lifetime: ACME issuers choose the lifetime; remove it")
        wild = [n for n in cert.names if n.startswith("*.")]
        if wild and issuer.challenge != "dns-01":
            errors.append(f"{where}.names: wildcard {wild[0]} needs an issuer with dns-01")
    if issuer.type == "local-ca" and cert.lifetime is not None and cert.lifetime >= issuer.intermediate_lifetime:
        errors.append(
            f"{where}.lifetime: {format_duration(cert.lifetime)} is too long for issuer {cert.issuer!r}: its "
            f"intermediate is valid for {format_duration(issuer.intermediate_lifetime)} from its creation "
            "and no certificate can outlive it"
        )
    return errors


def _lifetime_rules(where: str, cert: CertificateConfig, issuer: IssuerConfig | None) -> list[str]:
    """``renew_before`` (or a short lifetime) must leave the validity the ``check`` step demands.

    The check refuses a new certificate with less than ``renew_before +
    floor`` left (``Pipeline.expectations``): otherwise it would be due
    again the moment it is published. Only a lifetime known here can be
    compared: the certificate's ``lifetime`` (local CA, Vault), else the local
    CA's ``default_lifetime``. A Vault role's own ttl and an ACME CA's
    lifetime are only known from the issued certificate, so for those the
    check step decides at renewal time.
    """
    if issuer is not None and issuer.type == "acme":
        return []  # the CA decides; a lifetime set here is reported by _issuer_rules
    if cert.lifetime is not None:
        lifetime, source = cert.lifetime, "set by lifetime"
    elif issuer is not None and issuer.type == "local-ca":
        lifetime, source = issuer.default_lifetime, f"set by issuers.{cert.issuer}.default_lifetime"
    else:
        return []
    floor = remaining_floor(cert.lifetime)  # the check step's own rule (policy.min_remaining)
    needed = min_remaining(cert.lifetime, cert.renew_before)
    if lifetime > needed:
        return []
    if cert.renew_before is None:
        return [
            f"{where}.lifetime: {format_duration(lifetime)} ({source}) is not longer than the "
            f"{format_duration(floor)} a new certificate must have left; set a longer lifetime"
        ]
    return [
        f"{where}.renew_before: {format_duration(cert.renew_before)} does not fit in a lifetime of "
        f"{format_duration(lifetime)} ({source}): a new certificate must be valid for renew_before + "
        f"{format_duration(floor)}, so every renewal would issue one and discard it; "
        f"use less than {format_duration(lifetime - floor)}"
    ]


def _ownership_rules(where: str, cert: CertificateConfig) -> list[str]:
    """``owner`` and ``group`` are looked up by name, as ``publish`` does (no numeric ids)."""
    errors = []
    if cert.owner is not None:
        try:
            pwd.getpwnam(cert.owner)
        except KeyError:
            errors.append(f"{where}.owner: {cert.owner!r} is not a user on this host")
    if cert.group is not None:
        try:
            grp.getgrnam(cert.group)
        except KeyError:
            errors.append(f"{where}.group: {cert.group!r} is not a group on this host")
    return errors


def _directory_rules(
    path: Path, issuers: Mapping[str, IssuerConfig], certs: Mapping[str, CertificateConfig]
) -> list[str]:
    """Each certificate owns its ``output_dir`` alone: no sharing, no nesting, no CA directory."""
    errors: list[str] = []
    outs = {name: cert.output_dir.resolve() for name, cert in certs.items()}
    owners: dict[Path, str] = {}
    for name, out in outs.items():
        where = f"{path}: certificates.{name}.output_dir"
        if out in owners:
            errors.append(f"{where}: {out} is also used by certificates.{owners[out]}")
        else:
            owners[out] = name
        why = is_system_dir(out)
        if why is not None:
            errors.append(f"{where}: {out} is {why}: certd replaces and removes files in its output_dir; "
                          "name a directory of its own (e.g. /etc/certd/out/NAME)")
        elif out.exists() and not out.is_dir():
            errors.append(f"{where}: {out} exists and is not a directory")
        elif foreign := foreign_entries(out):
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            errors.append(f"{where}: {out} holds files certd did not make ({shown}); certd publishes only into "
                          "a directory it owns (new, empty, or marked by it): name another")
        else:
            probe = out
            while not probe.exists():
                probe = probe.parent
            if not probe.is_dir():
                errors.append(f"{where}: {probe} is a file, so {out} cannot be made under it")
            elif (why_not := unwritable(probe)) is not None:
                errors.append(f"{where}: {why_not}")
    seen: dict[tuple[int, int], str] = {}  # one directory under two paths (a bind mount, a hard-linked tree)
    for name, out in outs.items():
        try:
            st = out.stat()
        except OSError:
            continue
        other = seen.setdefault((st.st_dev, st.st_ino), name)
        if other != name and outs[other] != out:
            errors.append(f"{path}: certificates.{name}.output_dir: {out} is the same directory as {outs[other]}, "
                          f"the output_dir of certificates.{other} (a bind mount?)")
    ca_dirs = {issuer.dir.resolve(): n for n, issuer in issuers.items() if issuer.type == "local-ca"}
    errors += [f"{path}: issuers.{n}.dir: {d} is {why}: the local CA keeps its keys in a directory of its own"
               for d, n in ca_dirs.items() if (why := is_system_dir(d)) is not None]
    for name, out in outs.items():
        where = f"{path}: certificates.{name}.output_dir"
        outer = next((p for p in out.parents if p in owners), None)
        if outer is not None:
            errors.append(f"{where}: {out} is inside {outer}, the output_dir of certificates.{owners[outer]}")
        for ca_dir, issuer_name in ca_dirs.items():
            if out == ca_dir or ca_dir in out.parents:
                errors.append(f"{where}: {out} is inside {ca_dir}, the dir of issuers.{issuer_name}")
            elif out in ca_dir.parents:
                errors.append(f"{where}: {out} holds {ca_dir}, the dir of issuers.{issuer_name}")
    return errors


# Every file key whose file must exist; the Kubernetes token (jwt_file) is only there inside a pod.
_FILE_KEYS = (*(key for key in SCRUBBED if key != "jwt_file"), "ca_bundle", "roots", "kubeconfig", "pid_file")


def _file_refs(sections: list[tuple[str, object]], certificates: Mapping[str, CertificateConfig],
               keys: tuple[str, ...] = _FILE_KEYS) -> list[tuple[str, Path]]:
    """(dotted key, path) of every file the config names under ``keys``, verify bundles included."""
    refs: list[tuple[str, Path]] = []
    for where, model in sections:
        for key in keys:
            value = getattr(model, key, None)
            if isinstance(value, Path):
                refs.append((f"{where}.{key}", value))
    for name, cert in certificates.items():
        refs += [(f"certificates.{name}.verify[{i}].ca_bundle", v.ca_bundle)
                 for i, v in enumerate(cert.verify) if v.ca_bundle is not None]
    return refs


def special_file_rules(path: Path, sections: list[tuple[str, object]],
                       certificates: Mapping[str, CertificateConfig]) -> list[str]:
    """Every file the config names that exists must be a regular file of a size certd reads: ``/dev/zero`` as a
    token, a FIFO as a roots file or a device as a ``bundle_file`` (which certd would replace) is refused here,
    naming the key, before any CA is asked — not met as a MemoryError or a hang on the first renewal."""
    errors = []
    # Also what only some commands read (the API's TLS files, read by `certd run`; a pod's jwt_file).
    extra = ("bundle_file", "api_tls_cert_file", "api_client_ca_file", "jwt_file")
    for key, value in _file_refs(sections, certificates, (*_FILE_KEYS, *extra)):
        try:
            info = value.stat()
        except OSError:
            continue  # missing: check_files says so; unreadable: whatever reads it says so
        limit = SECRET_LIMIT if key.rsplit(".", 1)[-1] in SCRUBBED else CERT_LIMIT
        if stat.S_ISDIR(info.st_mode):
            continue  # named where it is read (an api_token_file that is a directory only disables writes)
        if not stat.S_ISREG(info.st_mode):
            errors.append(f"{path}: {key}: {value} is not a regular file (a device, FIFO or socket): refused")
        elif info.st_size > limit:
            errors.append(f"{path}: {key}: {value} is {info.st_size} bytes; at most {limit} are read")
    return errors


def check_files(config: Config) -> list[str]:
    """Referenced files that do not exist (yet): warnings, or errors with ``--strict``.

    One line per missing file, naming the first key that refers to it and
    then the others, so a bundle shared by many certificates is one problem.
    """
    sections: list[tuple[str, object]] = [("database", config.database), ("daemon", config.daemon)]
    sections += [(f"issuers.{n}", v) for n, v in config.issuers.items()]
    sections += [(f"deploy.{n}", v) for n, v in config.deploy.items()]
    refs = _file_refs(sections, config.certificates)
    missing: dict[Path, list[str]] = {}
    for key, value in refs:
        if value in missing or not value.exists():
            missing.setdefault(value, []).append(key)
    return [
        f"{config.path}: {keys[0]}: {value} does not exist" + (f" (also {', '.join(keys[1:])})" if keys[1:] else "")
        for value, keys in missing.items()
    ]


def key_file_rules(path: Path, key_file: Path | None) -> list[str]:
    """``[database] key_file``, when it exists, must hold a key (a missing one is ``check_files``' warning)."""
    if key_file is None or not key_file.exists():
        return []
    where = f"{path}: database.key_file"
    try:
        data = read_file(key_file, KEY_LIMIT)
    except OSError as exc:
        return [f"{where}: cannot read {key_file}: {exc.strerror}"]
    return [] if parse_key(data) is not None else [f"{where}: {key_file} {KEY_HINT}"]




def _readable_by(mode: int) -> str | None:
    who = [label for bit, label in ((stat.S_IRGRP, "its group"), (stat.S_IROTH, "every user")) if mode & bit]
    return " and ".join(who) or None


def check_secret_modes(config: Config) -> list[str]:
    """Secret files (and the SQLite database) readable by their group or by everyone: one warning line each."""
    refs: dict[Path, list[str]] = {}
    sections: list[tuple[str, object]] = [("database", config.database), ("daemon", config.daemon)]
    sections += [(f"issuers.{n}", v) for n, v in config.issuers.items()]
    sections += [(f"deploy.{n}", v) for n, v in config.deploy.items() if getattr(v, "type", None) == "webhook"]
    for where, model in sections:
        for key in MODE_CHECKED:
            value = getattr(model, key, None)
            if isinstance(value, Path):
                refs.setdefault(value, []).append(f"{where}.{key}")
    lines = []
    for value, keys in refs.items():
        try:
            info = value.stat()
        except OSError:
            continue  # missing: check_files says so
        if stat.S_ISDIR(info.st_mode):
            lines.append(f"{config.path}: {keys[0]}: {value} is a directory, not a file holding the secret")
            continue
        try:
            # Through the bounded reader: a /proc file such as /proc/kmsg is "regular", size 0, and a plain
            # read of it blocks for ever (check-config and `certd run` hung on one).
            empty = info.st_size < 4096 and stat.S_ISREG(info.st_mode) and not read_file(value, 4096).strip()
        except OSError as exc:
            lines.append(f"{config.path}: {keys[0]}: {value} cannot be read by this user ({exc.strerror}): "
                         "whatever needs this secret will be refused if certd runs as this user")
            continue
        if empty:
            lines.append(f"{config.path}: {keys[0]}: {value} is empty: whatever needs this secret will be refused")
        mode = stat.S_IMODE(info.st_mode)
        readers = _readable_by(mode)
        if readers:
            also = f" (also {', '.join(keys[1:])})" if keys[1:] else ""
            lines.append(f"{config.path}: {keys[0]}: {value} is readable by {readers} (mode {mode:04o}): a secret "
                         f"should be 0600 or 0400, owned by the user certd runs as{also}")
    database = sqlite_file(config.database.url)
    if database is not None:
        try:
            mode = stat.S_IMODE(database.stat().st_mode)
        except OSError:
            mode = 0
        readers = _readable_by(mode)
        if readers:
            lines.append(f"{config.path}: database.url: {database} is readable by {readers} (mode {mode:04o}): it "
                         "holds the inventory and its sealed keys; chmod 0600 (SQLite gives its -wal and -shm the "
                         "same mode)")
    return lines
