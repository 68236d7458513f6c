"""Reading a config file: every table validated on its own, every problem collected, then the rules.

Why a hand-driven loader around pydantic: the issuer and deploy tables are
unions picked by ``type``, and an operator needs errors that name *their* key
path (``issuers.public.directory``), not pydantic's union branches. One run
reports every problem found, each naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import make_url

from certd.config.deploy import DEPLOY_TYPES
from certd.config.issuers import ISSUER_TYPES
from certd.config.model import NAME_RE, NAME_RULE, CertificateConfig, Config, DaemonConfig, DatabaseConfig
from certd.config.rules import cross_check, key_file_rules, special_file_rules
from certd.config.secrets import INLINE_HINTS
from certd.config.types import Model, sqlite_file
from certd.errors import ConfigError
from certd.inputs import CONFIG_LIMIT, read_file

__all__ = ["default_config_path", "load_config"]


def default_config_path() -> Path:
    """``$CERTD_CONFIG``, else ``./certd.toml``."""
    return Path(os.environ.get("CERTD_CONFIG") or "certd.toml")


def _format_errors(path: Path, prefix: str, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1]) if err["loc"] else ""
            hint = INLINE_HINTS.get(key)
            msg = f"unknown key; secrets are read from files: use {hint}" if hint else "unknown key"
        elif err["type"] == "missing":
            msg = "missing required key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(f"{path}: {loc}: {msg}")
    return out


def _validate(
    path: Path, prefix: str, model: type[Model], data: Any, errors: list[str], base: Path
) -> Any:
    try:
        return model.model_validate(data, context={"base": base})
    except ValidationError as exc:
        errors.extend(_format_errors(path, prefix, exc))
        return None


def _typed_tables(
    path: Path, section: str, raw: Any, kinds: dict[str, type[Model]], errors: list[str], base: Path
) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{path}: {section}: must be a table of named entries")
        return {}
    out: dict[str, Any] = {}
    for name, table in raw.items():
        where = f"{section}.{name}"
        if not NAME_RE.match(name):
            errors.append(f"{path}: {where}: {NAME_RULE}")
            continue
        if not isinstance(table, dict):
            errors.append(f"{path}: {where}: must be a table")
            continue
        kind = table.get("type")
        if kind not in kinds:
            errors.append(f"{path}: {where}.type: must be one of {', '.join(sorted(kinds))}, got {kind!r}")
            continue
        value = _validate(path, where, kinds[kind], table, errors, base)
        if value is not None:
            out[name] = value
    return out


def _resolve_sqlite(url: str, base: Path) -> str:
    """A relative SQLite file is relative to the config's directory, so a config can travel with its data."""
    path = sqlite_file(url)
    if path is None or path.is_absolute():
        return url
    return make_url(url).set(database=str((base / path).resolve())).render_as_string(hide_password=False)


def _broken(raw: Any, valid: Mapping[str, Any]) -> set[str]:
    """Named tables present in the file that failed their own validation (and were reported)."""
    return set(raw) - set(valid) if isinstance(raw, dict) else set()


def load_config(path: Path | str) -> Config:
    """Load and validate; raise ``ConfigError`` listing every problem found."""
    path = Path(path)
    try:
        raw = tomllib.loads(read_file(path, CONFIG_LIMIT).decode("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses once per level: a few hundred nested [ or { exhaust the stack
        raise ConfigError(f"{path}: malformed TOML: nested too deeply") from exc
    base = path.resolve().parent
    errors: list[str] = []
    known = {"database", "daemon", "issuers", "certificates", "deploy"}
    errors.extend(f"{path}: {key}: unknown section" for key in sorted(set(raw) - known))
    database = _validate(path, "database", DatabaseConfig, raw.get("database", {}), errors, base)
    daemon = _validate(path, "daemon", DaemonConfig, raw.get("daemon", {}), errors, base)
    issuers = _typed_tables(path, "issuers", raw.get("issuers"), ISSUER_TYPES, errors, base)
    deploys = _typed_tables(path, "deploy", raw.get("deploy"), DEPLOY_TYPES, errors, base)
    certs: dict[str, CertificateConfig] = {}
    raw_certs = raw.get("certificates", {})
    if not isinstance(raw_certs, dict):
        errors.append(f"{path}: certificates: must be a table of named entries")
        raw_certs = {}
    for name, table in raw_certs.items():
        if not NAME_RE.match(name):
            errors.append(f"{path}: certificates.{name}: {NAME_RULE}")
            continue
        cert = _validate(path, f"certificates.{name}", CertificateConfig, table, errors, base)
        if cert is not None:
            certs[name] = cert
    errors += cross_check(
        path, issuers, certs, deploys,
        broken_issuers=_broken(raw.get("issuers"), issuers), broken_deploys=_broken(raw.get("deploy"), deploys),
    )
    if isinstance(database, DatabaseConfig):
        errors += key_file_rules(path, database.key_file)
    sections: list[tuple[str, object]] = [("database", database), ("daemon", daemon)]
    sections += [(f"issuers.{n}", v) for n, v in issuers.items()] + [(f"deploy.{n}", v) for n, v in deploys.items()]
    errors += special_file_rules(path, sections, certs)
    if errors:
        raise ConfigError("\n".join(errors))
    assert isinstance(database, DatabaseConfig) and isinstance(daemon, DaemonConfig)
    database = database.model_copy(update={"url": _resolve_sqlite(database.url, base)})
    return Config(
        path=path, database=database, daemon=daemon, issuers=issuers, certificates=certs, deploy=deploys
    )
