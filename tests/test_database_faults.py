"""Database faults and keys at rest, through the CLI on real SQLite files and real PostgreSQL servers.

Every fault an operator can cause ends with exit 3 and one line naming the
database (password hidden) and the cause. Root ignores file modes, so when
the tests run as root the read-only cases run certd under ``setpriv`` without
capabilities: uid 0 then gets an ordinary owner's permissions. Those runs and
the daemon are real processes; the other commands run in-process
(``tests/cli.py``), where certd opens and reports the database the same way.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from certd.config.load import load_config
from certd.engine.app import App
from certd.pki.keys import KeyType, generate_key, key_pem
from tests.cli import REPO, certd
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig
from tests.servers.ports import default_signals, free_port
from tests.servers.postgres import PostgresCluster, postgres_bindir

SECRET = "s3cret"
IN_MEMORY = "an in-memory SQLite database cannot hold the inventory from one command to the next"
MISMATCH = "this key_file does not match the one the inventory was sealed with"
COMMANDS = [("list",), ("renew", "--all"), ("db", "upgrade")]


def _unprivileged() -> list[str]:
    """A prefix under which file modes apply to this process (root with no capabilities, or nothing)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: root ignores file modes")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


def _certd(*args: str, config: Path, unprivileged: bool = False,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """In-process, except where file modes must apply to root (``setpriv``) or the command is the daemon."""
    process = unprivileged or args[0] == "run"
    return certd(*args, config=config, process=process, prefix=_unprivileged() if unprivileged else (),
                 timeout=timeout, umask=0o022)


def _one_db_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 3 and exactly one line, ``error: database <url>: <cause>``, containing every needle."""
    assert proc.returncode == 3, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: database "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _key(path: Path) -> Path:
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def _config(write_config: WriteConfig, url: str, *, key_file: Path | None = None, extra: str = "",
            body: str = LOCAL_CA_CONFIG, name: str = "certd.toml") -> Path:
    database = f'[database]\nurl = "{url}"\n' + (f'key_file = "{key_file}"\n' if key_file else "") + extra
    return write_config(database + body, name=name)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite database in a directory of its own, so making that read-only touches nothing else."""
    (tmp_path / "db").mkdir()
    return tmp_path / "db" / "certd.db"


def _sidecars(db: Path) -> list[Path]:
    return [p for p in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if p.exists()]


# -- SQLite files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_malformed_file(write_config: WriteConfig, db_path: Path, command: tuple[str, ...]) -> None:
    garbage = b"this is not a database\n" * 200
    db_path.write_bytes(garbage)
    cfg = _config(write_config, f"sqlite:///{db_path}")
    _one_db_error(_certd(*command, config=cfg), f"sqlite:///{db_path}", "file is not a database")
    assert db_path.read_bytes() == garbage and _sidecars(db_path) == []


def test_read_only_database_file_leaves_nothing_behind(write_config: WriteConfig, db_path: Path) -> None:
    cfg = _config(write_config, f"sqlite:///{db_path}")
    assert _certd("db", "upgrade", config=cfg, unprivileged=True).returncode == 0
    db_path.chmod(0o444)
    for command in COMMANDS:
        _one_db_error(_certd(*command, config=cfg, unprivileged=True), str(db_path), "read-only", "mode 0444")
        assert _sidecars(db_path) == []  # SQLite never opened it, so no 0444 -wal/-shm
    db_path.chmod(0o600)
    proc = _certd("renew", "--all", config=cfg, unprivileged=True)
    assert proc.returncode == 0, proc.stderr


def test_read_only_directory(write_config: WriteConfig, db_path: Path) -> None:
    cfg = _config(write_config, f"sqlite:///{db_path}")
    db_path.parent.chmod(0o555)
    try:
        for command in COMMANDS:  # no database yet: it cannot be created
            _one_db_error(_certd(*command, config=cfg, unprivileged=True), str(db_path.parent), "not writable")
        db_path.parent.chmod(0o755)
        assert _certd("db", "upgrade", config=cfg, unprivileged=True).returncode == 0
        db_path.parent.chmod(0o555)
        for command in COMMANDS:  # a database exists, but SQLite could not create its -wal and -shm
            _one_db_error(_certd(*command, config=cfg, unprivileged=True), str(db_path.parent), "-wal")
    finally:
        db_path.parent.chmod(0o755)
    assert _sidecars(db_path) == []
    assert _certd("renew", "--all", config=cfg, unprivileged=True).returncode == 0


def test_stale_read_only_shm_is_named(write_config: WriteConfig, db_path: Path) -> None:
    """What SQLite does by itself: a reader of a 0444 WAL database creates -wal and -shm with 0444 and leaves them."""
    cfg = _config(write_config, f"sqlite:///{db_path}")
    assert _certd("db", "upgrade", config=cfg).returncode == 0
    db_path.chmod(0o444)
    reader = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM certificates')"
    subprocess.run([*_unprivileged(), sys.executable, "-c", reader, str(db_path)], capture_output=True, timeout=60)
    shm = db_path.with_name(db_path.name + "-shm")
    assert shm.exists() and _mode(shm) == 0o444
    db_path.chmod(0o600)  # the operator fixed the database; the -shm still breaks it
    wal = db_path.with_name(db_path.name + "-wal")
    _one_db_error(_certd("list", config=cfg, unprivileged=True), f"{wal} and {shm} are not writable", "mode 0444")
    for side in _sidecars(db_path):
        side.chmod(0o600)
    assert _certd("list", config=cfg, unprivileged=True).returncode == 0


def test_locked_past_busy_timeout(write_config: WriteConfig, db_path: Path) -> None:
    cfg = _config(write_config, f"sqlite:///{db_path}", extra='busy_timeout = "1s"\n')
    assert _certd("db", "upgrade", config=cfg).returncode == 0
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        for command in COMMANDS:
            started = time.monotonic()
            _one_db_error(_certd(*command, config=cfg), f"sqlite:///{db_path}", "database is locked", "busy_timeout")
            assert time.monotonic() - started < 30
    finally:
        holder.rollback()
        holder.close()
    assert _certd("renew", "--all", config=cfg).returncode == 0


def test_new_database_files_are_0600_under_umask_022(write_config: WriteConfig, db_path: Path,
                                                     tmp_path: Path) -> None:
    """The database, -wal and -shm while the daemon runs; secret files others can read are logged at start."""
    token = tmp_path / "api.token"
    token.write_text("token\n")
    token.chmod(0o644)
    port = free_port()
    daemon = f'[daemon]\napi_listen = "127.0.0.1:{port}"\napi_token_file = "{token}"\ncheck_interval = "1h"\n'
    cfg = _config(write_config, f"sqlite:///{db_path}", key_file=_key(tmp_path / "db.key"),
                  body=daemon + LOCAL_CA_CONFIG)
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(cfg), "run"], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, umask=0o022, preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 60
        while len(_sidecars(db_path)) < 2 or not (tmp_path / "out/edge/cert.pem").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        assert {p.name: _mode(p) for p in [db_path, *_sidecars(db_path)]} == {
            "certd.db": 0o600, "certd.db-wal": 0o600, "certd.db-shm": 0o600}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert f"daemon.api_token_file: {token} is readable by its group and every user (mode 0644)" in log.read_text()


# -- schema from a newer certd ----------------------------------------------------------------------------


def test_schema_from_a_newer_certd(write_config: WriteConfig, db_url: str) -> None:
    cfg = _config(write_config, db_url)
    assert _certd("db", "upgrade", config=cfg).returncode == 0
    engine = sa.create_engine(db_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    for command in COMMANDS:
        _one_db_error(_certd(*command, config=cfg), make_url(db_url).render_as_string(hide_password=True),
                      "the database was created by a newer certd (revision 0099); upgrade certd")
    check = _certd("check", config=cfg)
    assert check.returncode == 3 and "newer certd (revision 0099)" in check.stdout
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0099"
    engine.dispose()


# -- a database that is not certd's -----------------------------------------------------------------------


def _tables(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t}"))]
                    for t in sorted(sa.inspect(conn).get_table_names())}
    finally:
        engine.dispose()


def _sql(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


FOREIGN = "holds tables that are not certd's"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(["CREATE TABLE users (id int)", "INSERT INTO users VALUES (1)"],
                     f"{FOREIGN} (users): point database.url at an empty or certd database", id="foreign-tables"),
        pytest.param(["CREATE TABLE users (id int)", "CREATE TABLE orders (id int)",
                      "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL)",
                      "INSERT INTO alembic_version VALUES ('3f2a9c1d7b4e')"],
                     f"{FOREIGN} (orders, users; its alembic_version is at 3f2a9c1d7b4e): point database.url at an "
                     "empty or certd database", id="another-alembic-project"),
        pytest.param(["UPGRADE", "DELETE FROM alembic_version"],
                     "certd's tables exist but alembic_version is empty: their schema revision is unknown",
                     id="empty-alembic-version"),
    ],
)
def test_a_database_that_is_not_certds(write_config: WriteConfig, db_url: str, setup: list[str],
                                       expected: str) -> None:
    """Refused with exit 3 before certd migrates into it (nor reads it): the database is left exactly as it was."""
    cfg = _config(write_config, db_url)
    if setup[0] == "UPGRADE":
        assert _certd("db", "upgrade", config=cfg).returncode == 0
        setup = setup[1:]
    _sql(db_url, *setup)
    before = _tables(db_url)
    shown = make_url(db_url).render_as_string(hide_password=True)
    for command in [*COMMANDS, ("renew", "edge", "--force"), ("history", "edge")]:
        _one_db_error(_certd(*command, config=cfg), f"database {shown}: {expected}")
    check = _certd("check", config=cfg)
    assert check.returncode == 3 and check.stdout.startswith("CERTD UNKNOWN - ") and expected in check.stdout
    assert _tables(db_url) == before


# -- PostgreSQL that will not have us ---------------------------------------------------------------------


def _pg(base: str, **parts: object) -> str:
    return make_url(base).set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_postgres_unreachable(write_config: WriteConfig) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{port}/certd"
    cfg = _config(write_config, url)
    for command in COMMANDS:
        proc = _certd(*command, config=cfg)
        _one_db_error(proc, f"postgresql+psycopg://postgres:***@127.0.0.1:{port}/certd", "Connection refused")
        assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_postgres_unknown_database(write_config: WriteConfig, postgres_admin_url: str, where: str) -> None:
    admin = make_url(postgres_admin_url)
    if admin.password:
        pytest.skip("the test server wants its own password; this test puts a made-up one in the URL")
    if where == "userinfo":
        url = _pg(postgres_admin_url, database="nosuchdb", password=SECRET)
    else:
        url = _pg(postgres_admin_url, database="nosuchdb", query={"password": SECRET})
    cfg = _config(write_config, url)
    for command in COMMANDS:
        proc = _certd(*command, config=cfg)
        _one_db_error(proc, "nosuchdb", 'database "nosuchdb" does not exist')
        assert SECRET not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def password_postgres() -> Iterator[str]:
    """A cluster of our own that demands a password (the shared test servers trust everyone); its URL."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    try:
        admin = sa.create_engine(cluster.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text("ALTER ROLE postgres PASSWORD 'right-password'"))
            hba = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            (cluster.datadir / "pg_hba.conf").write_text(hba)
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        deadline = time.monotonic() + 10
        while True:  # the reload is asynchronous: wait until a password-less login is refused
            try:
                admin.connect().close()
            except sa.exc.OperationalError:
                break
            assert time.monotonic() < deadline, "pg_hba.conf reload did not take effect"
            time.sleep(0.1)
        yield _pg(cluster.admin_url, password="right-password")
    finally:
        cluster.stop()


@pytest.mark.postgres
def test_postgres_authentication_failure(write_config: WriteConfig, password_postgres: str) -> None:
    wrong = f"wrong-{SECRET}"
    cfg = _config(write_config, _pg(password_postgres, password=wrong))
    for command in COMMANDS:
        proc = _certd(*command, config=cfg)
        _one_db_error(proc, "postgres:***@", "password authentication failed")
        assert wrong not in proc.stdout + proc.stderr
    right = _config(write_config, password_postgres, name="right.toml")
    proc = _certd("db", "upgrade", config=right)
    assert proc.returncode == 0, proc.stderr
    assert "right-password" not in proc.stdout + proc.stderr and "postgres:***@" in proc.stdout


@pytest.mark.postgres
def test_password_in_the_query_is_never_printed(write_config: WriteConfig, postgres_url: str) -> None:
    if make_url(postgres_url).password:
        pytest.skip("the test server wants its own password")
    cfg = _config(write_config, _pg(postgres_url, query={"password": SECRET, "application_name": "certd"}))
    proc = _certd("db", "upgrade", config=cfg)
    assert proc.returncode == 0, proc.stderr
    assert "password=***" in proc.stdout and "application_name=certd" in proc.stdout and SECRET not in proc.stdout


# -- key_file ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"not a key\n", os.urandom(32), base64.b64encode(os.urandom(16))],
                         ids=["text", "raw-bytes", "short"])
def test_garbled_key_file_is_a_config_error(write_config: WriteConfig, db_path: Path, tmp_path: Path,
                                            content: bytes) -> None:
    key = tmp_path / "db.key"
    key.write_bytes(content)
    key.chmod(0o600)
    cfg = _config(write_config, f"sqlite:///{db_path}", key_file=key)
    for command in [("check-config",), ("renew", "--all")]:
        proc = _certd(*command, config=cfg)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{cfg}: database.key_file: {key} must hold 32 random bytes as base64" in proc.stderr
    assert not db_path.exists()


def test_secret_files_others_can_read_are_warnings(write_config: WriteConfig, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    _key(secrets / "db.key")
    _key(secrets / "api-tls.key")
    (secrets / "api-tls.pem").write_text("not a secret\n")
    for name in ("api.token", "tsig.secret", "eab.key", "vault.token", "role_id", "secret_id", "hook.secret"):
        (secrets / name).write_text("secret\n")
    body = f"""
[database]
url = "sqlite:///{tmp_path}/certd.db"
key_file = "{secrets}/db.key"

[daemon]
api_token_file = "{secrets}/api.token"
api_tls_cert_file = "{secrets}/api-tls.pem"
api_tls_key_file = "{secrets}/api-tls.key"

[issuers.acme]
type = "acme"
directory = "https://acme.example.test/directory"
challenge = "dns-01"
dns_server = "127.0.0.1:53"
tsig_key_name = "certd"
tsig_secret_file = "{secrets}/tsig.secret"
eab_kid = "kid-1"
eab_hmac_key_file = "{secrets}/eab.key"

[issuers.vault]
type = "vault"
url = "https://vault.example.test:8200"
role = "r"
token_file = "{secrets}/vault.token"

[issuers.approle]
type = "vault"
url = "https://vault.example.test:8200"
role = "r"
auth = "approle"
role_id_file = "{secrets}/role_id"
secret_id_file = "{secrets}/secret_id"

[deploy.hook]
type = "webhook"
url = "https://hooks.example.test/certd"
secret_file = "{secrets}/hook.secret"
"""
    cfg = write_config(body)
    for path in secrets.iterdir():
        path.chmod(0o644)
    (secrets / "api.token").chmod(0o640)
    for strict in ([], ["--strict"]):
        proc = _certd("check-config", *strict, config=cfg)
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if "is readable by" in line]
        for key in ("database.key_file", "daemon.api_token_file", "daemon.api_tls_key_file",
                    "issuers.acme.tsig_secret_file",
                    "issuers.acme.eab_hmac_key_file", "issuers.vault.token_file", "issuers.approle.secret_id_file",
                    "deploy.hook.secret_file"):
            assert any(f"{cfg}: {key}: " in line for line in warnings), (key, proc.stderr)
        assert len(warnings) == 8 and "role_id_file" not in proc.stderr  # a role id is not a secret
        assert "api_tls_cert_file" not in proc.stderr  # a certificate is public
        assert any("api.token is readable by its group (mode 0640)" in line for line in warnings)
    for path in secrets.iterdir():
        path.chmod(0o600)
    proc = _certd("check-config", config=cfg)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr


def _key_check(url: str) -> str | None:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT value FROM meta WHERE key = 'key_check'")).scalar()  # type: ignore[no-any-return]
    finally:
        engine.dispose()


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() or 0)
    finally:
        engine.dispose()


def _refused(proc: subprocess.CompletedProcess[str], key: Path) -> None:
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{MISMATCH}: {key}" in lines[0], proc.stderr


def test_another_key_file_is_refused_at_start(write_config: WriteConfig, db_url: str, tmp_path: Path) -> None:
    key_a, key_b = _key(tmp_path / "a.key"), _key(tmp_path / "b.key")
    cfg_a = _config(write_config, db_url, key_file=key_a, name="a.toml")
    port = free_port()
    cfg_b = _config(write_config, db_url, key_file=key_b, name="b.toml",
                    body=f'[daemon]\napi_listen = "127.0.0.1:{port}"\n' + LOCAL_CA_CONFIG)
    assert _certd("renew", "--all", config=cfg_a).returncode == 0
    check = _key_check(db_url)
    assert check is not None and check.startswith("v1:")
    raw = base64.b64decode(key_a.read_text())
    assert key_a.read_text().strip() not in check and raw.hex() not in check
    versions, events = _count(db_url, "versions"), _count(db_url, "events")
    for command in [("list",), ("renew", "--all", "--force"), ("db", "upgrade"), ("history", "edge"),
                    ("run", "--agent"), ("run",)]:
        _refused(_certd(*command, config=cfg_b, timeout=60), key_b)
    assert (_count(db_url, "versions"), _count(db_url, "events")) == (versions, events)
    assert _key_check(db_url) == check


def test_an_older_inventory_gets_its_check_value_from_a_key_that_opens(write_config: WriteConfig, sqlite_url: str,
                                                                       tmp_path: Path) -> None:
    key_a, key_b = _key(tmp_path / "a.key"), _key(tmp_path / "b.key")
    cfg_a = _config(write_config, sqlite_url, key_file=key_a, name="a.toml")
    cfg_b = _config(write_config, sqlite_url, key_file=key_b, name="b.toml")
    assert _certd("renew", "--all", config=cfg_a).returncode == 0
    engine = sa.create_engine(sqlite_url, poolclass=NullPool)
    with engine.begin() as conn:  # as an older certd left it: sealed keys, no check value
        conn.execute(sa.text("DELETE FROM meta"))
    engine.dispose()
    _refused(_certd("list", config=cfg_b), key_b)  # its key opens none of the sealed keys
    assert _key_check(sqlite_url) is None
    assert _certd("list", config=cfg_a).returncode == 0
    assert _key_check(sqlite_url) is not None
    _refused(_certd("list", config=cfg_b), key_b)


def test_rotate_key(write_config: WriteConfig, db_url: str, tmp_path: Path) -> None:
    key_a, key_b = _key(tmp_path / "a.key"), _key(tmp_path / "b.key")
    cfg_a = _config(write_config, db_url, key_file=key_a, name="a.toml")
    port = free_port()
    agent_body = f'[daemon]\napi_listen = "127.0.0.1:{port}"\n' + LOCAL_CA_CONFIG.replace("{tmp}/out/", "{tmp}/host-b/")
    cfg_b = _config(write_config, db_url, key_file=key_b, name="agent.toml", body=agent_body)
    assert _certd("renew", "--all", config=cfg_a).returncode == 0
    account = key_pem(generate_key(KeyType.ECDSA_P256))
    directory = "https://acme.example.test/directory"
    old_replica = App.open(load_config(cfg_a))  # a replica that keeps running on the old key
    try:
        old_replica.inventory.save_account("acme", directory, account, "https://acme.example.test/acct/1")
        before = _key_check(db_url)

        garbled = tmp_path / "garbled.key"
        garbled.write_text("nope\n")
        proc = _certd("db", "rotate-key", "--new-key-file", str(garbled), config=cfg_a)
        assert proc.returncode == 2 and f"--new-key-file: {garbled} must hold 32 random bytes" in proc.stderr
        assert _key_check(db_url) == before

        proc = _certd("db", "rotate-key", "--new-key-file", str(key_b), config=cfg_a)
        assert proc.returncode == 0, proc.stderr
        assert "re-sealed 2 certificate keys and 1 ACME account key" in proc.stdout
        assert f'key_file = "{key_b}"' in proc.stdout and _key_check(db_url) != before

        _refused(_certd("list", config=cfg_a), key_a)
        late = old_replica.pipeline.renew("edge", force=True)  # cannot slip in a key sealed with the old one
        assert (late.outcome, late.failed_step) == ("failed", "plan") and MISMATCH in (late.error or "")
    finally:
        old_replica.close()

    log = tmp_path / "agent.log"
    with log.open("w") as out:
        agent = subprocess.Popen([sys.executable, "-m", "certd", "-c", str(cfg_b), "run", "--agent"], cwd=REPO,
                                 stdout=out, stderr=subprocess.STDOUT, preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"host-b/{n}/combined.pem").exists() for n in ("edge", "backend")):
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
    for name in ("edge", "backend"):
        installed = (tmp_path / f"host-b/{name}/privkey.pem").read_bytes()
        assert installed == (tmp_path / f"out/{name}/privkey.pem").read_bytes()
    reader = App.open(load_config(cfg_b), sync=False)
    try:
        assert reader.inventory.load_account("acme", directory) == (account, "https://acme.example.test/acct/1")
    finally:
        reader.close()
    proc = _certd("db", "rotate-key", "--new-key-file", str(key_b), config=cfg_b)
    assert proc.returncode == 0 and "already sealed" in proc.stdout


def test_rotate_key_without_a_key_file(write_config: WriteConfig, sqlite_url: str, tmp_path: Path) -> None:
    cfg = _config(write_config, sqlite_url)
    proc = _certd("db", "rotate-key", "--new-key-file", str(_key(tmp_path / "new.key")), config=cfg)
    assert proc.returncode == 2 and "database.key_file is not set" in proc.stderr


# -- a url or key_file that cannot be an inventory ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code", "expected"),
    [
        pytest.param("mysql://certd@127.0.0.1/certd", 2, "database.url: unsupported database 'mysql'", id="mysql"),
        pytest.param("not a url", 2, "database.url: not a SQLAlchemy URL", id="unparsable"),
        pytest.param("sqlite:///{dir}", 3, "is not a regular file", id="sqlite-path-is-a-directory"),
        pytest.param("sqlite://", 2, IN_MEMORY, id="sqlite-in-memory-empty"),
        pytest.param("sqlite:///:memory:", 2, IN_MEMORY, id="sqlite-in-memory"),
        pytest.param("sqlite:///file::memory:?uri=true", 2, IN_MEMORY, id="sqlite-in-memory-uri"),
        pytest.param("sqlite://relative.db", 2, "a SQLite URL names a file, not a host: sqlite:///relative/path "
                     "(against the config file's directory) or sqlite:////absolute/path", id="sqlite-host-part"),
        pytest.param(f"postgresql+psycopg://x:{SECRET}@127.0.0.1:99999/db", 2, "port 99999 is not from 1 to 65535",
                     id="postgres-port-out-of-range"),
        pytest.param(f"postgresql+psycopg://x:{SECRET}@127.0.0.1:0/db", 2, "port 0 is not from 1 to 65535",
                     id="postgres-port-zero"),
        pytest.param(f"postgresql+psycopg://x:{SECRET}@127.0.0.1:5o32/db", 2, "the port is not a number from 1",
                     id="postgres-port-not-a-number"),
    ],
)
def test_a_url_that_is_no_inventory(write_config: WriteConfig, db_path: Path, url: str, code: int,
                                    expected: str) -> None:
    cfg = _config(write_config, url.replace("{dir}", str(db_path.parent)))
    # A URL that cannot be one is the config file's fault: check-config refuses it too, naming the file.
    for command in [("check-config",), *COMMANDS] if code == 2 else COMMANDS:
        proc = _certd(*command, config=cfg)
        assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
        assert code != 2 or f"{cfg}: database.url: " in proc.stderr, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
    if code == 2:  # the monitoring plugin: a config it cannot use is UNKNOWN (3), never WARNING (1)
        check = _certd("check", config=cfg)
        assert check.returncode == 3 and check.stdout.startswith("CERTD UNKNOWN - "), check.stdout + check.stderr
        assert f"{cfg}: database.url: " in check.stdout and expected in check.stdout, check.stdout
        assert SECRET not in check.stdout + check.stderr
    assert list(db_path.parent.iterdir()) == []


def test_a_key_file_that_is_a_directory(write_config: WriteConfig, db_path: Path, tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    cfg = _config(write_config, f"sqlite:///{db_path}", key_file=tmp_path / "keys")
    for command in [("check-config",), *COMMANDS]:
        proc = _certd(*command, config=cfg)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{cfg}: database.key_file: cannot read {tmp_path / 'keys'}: Is a directory" in proc.stderr
    assert not db_path.exists()


def test_upgrades_in_threads_of_one_process(tmp_path: Path) -> None:
    """Alembic keeps its migration context in process globals; certd serialises upgrades so threads can't mix them."""
    import threading

    from certd.inventory.db import create_db_engine, schema_is_current, upgrade

    engines = [create_db_engine(f"sqlite:///{tmp_path}/inv-{i % 3}.db") for i in range(6)]
    errors: list[BaseException] = []

    def run(engine: sa.Engine) -> None:
        try:
            upgrade(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and all(schema_is_current(e) for e in engines)
    finally:
        for e in engines:
            e.dispose()
