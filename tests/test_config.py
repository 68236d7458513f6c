"""Config loading: every error names the file, the key path and the problem."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from certd.config.load import load_config
from certd.config.rules import check_files
from certd.errors import ConfigError
from tests.conftest import LOCAL_CA_CONFIG, WriteConfig

REPO = Path(__file__).resolve().parent.parent


def test_example_config_is_valid() -> None:
    config = load_config(REPO / "config.example.toml")
    assert {"public", "internal", "local"} <= set(config.issuers)
    assert config.certificates["edge"].renew_before == timedelta(days=30)


def test_relative_paths_resolve_against_the_config_directory(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config('[database]\nurl = "sqlite:///var/x.db"\n' + LOCAL_CA_CONFIG.replace("{tmp}/", ""))
    config = load_config(path)
    assert config.database.url == f"sqlite:///{tmp_path}/var/x.db"
    assert config.certificates["edge"].output_dir == tmp_path / "out/edge"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[certificates\n", "malformed TOML"),
        ("[database]\nurl = 'sqlite:///x.db'\nfoo = 1\n", "database.foo: unknown key"),
        ("[bogus]\n", "bogus: unknown section"),
        (LOCAL_CA_CONFIG.replace('names = ["lb.example.test", "www.example.test"]',
                                 'names = ["lb.example.test"]\nrenew_before = "3x"'),
         "certificates.edge.renew_before: invalid duration '3x'"),
        (LOCAL_CA_CONFIG.replace('issuer = "local"\nnames = ["lb', 'issuer = "nope"\nnames = ["lb'),
         "certificates.edge.issuer: unknown issuer 'nope' (known: local)"),
        (LOCAL_CA_CONFIG.replace('"lb.example.test", "www.example.test"', '"a.example.test", "a.example.test"'),
         "certificates.edge: names lists a.example.test more than once"),
        (LOCAL_CA_CONFIG.replace('names = ["lb.example.test", "www.example.test"]', 'names = ["bad name!"]'),
         "certificates.edge.names.0: 'bad name!' is not a DNS name"),
        (LOCAL_CA_CONFIG + "\n[certificates.edge]\nissuer = 'local'\n", "malformed TOML"),
        (LOCAL_CA_CONFIG.replace('"{tmp}/out/backend"', '"{tmp}/out/edge"'),
         "certificates.backend.output_dir: {tmp}/out/edge is also used by certificates.edge"),
        ("[issuers.v]\ntype = 'vault'\nurl = 'https://v:8200'\nrole = 'r'\ntoken = 'hunter2'\ntoken_file = 'x'\n",
         "issuers.v.token: unknown key; secrets are read from files: use token_file"),
        ("[issuers.v]\ntype = 'vault'\nurl = 'https://v:8200'\nrole = 'r'\nauth = 'approle'\n",
         "issuers.v: auth = 'approle' needs role_id_file and secret_id_file"),
        ("[issuers.x]\ntype = 'smtp'\n", "issuers.x.type: must be one of acme, local-ca, vault, got 'smtp'"),
        ("[issuers.a]\ntype = 'acme'\ndirectory = 'https://ca/dir'\n[certificates.e]\nissuer = 'a'\n"
         "names = ['e.example.test']\nkey = 'ed25519'\noutput_dir = '{tmp}/e'\n",
         "certificates.e.key: issuer 'a' (acme) cannot issue ed25519"),
        ("[issuers.a]\ntype = 'acme'\ndirectory = 'https://ca/dir'\n[certificates.e]\nissuer = 'a'\n"
         "names = ['*.example.test']\noutput_dir = '{tmp}/e'\n",
         "certificates.e.names: wildcard *.example.test needs an issuer with dns-01"),
        (LOCAL_CA_CONFIG.replace('output_dir = "{tmp}/out/edge"', 'output_dir = "{tmp}/out/edge"\nmode = "0644"'),
         "certificates.edge.mode: mode 0644 gives others access to the private key"),
        (LOCAL_CA_CONFIG.replace('output_dir = "{tmp}/out/edge"', 'output_dir = "{tmp}/out/edge"\n'
                                 'renew_before = "1d"\nrenew_fraction = 0.5'),
         "certificates.edge: set renew_before or renew_fraction, not both"),
        ("[daemon]\nworkers = 0\n", "daemon.workers: Input should be greater than or equal to 1"),
        ("[daemon]\napi_listen = 'localhost'\n", "daemon.api_listen: 'localhost' is not HOST:PORT"),
    ],
    ids=["toml-unclosed-table", "unknown-key", "unknown-section", "invalid-duration", "unknown-issuer",
         "duplicate-name", "not-a-dns-name", "toml-duplicate-table", "output-dir-shared", "secret-inline",
         "approle-without-files", "unknown-issuer-type", "key-type-the-issuer-cannot-issue", "wildcard-without-dns01",
         "key-mode-world-readable", "renew-before-and-fraction", "zero-workers", "listen-not-host-port"],
)
def test_bad_config_names_file_and_key(write_config: WriteConfig, tmp_path: Path, body: str, expected: str) -> None:
    path = write_config(body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert expected.replace("{tmp}", str(tmp_path)) in message
    assert "hunter2" not in message


def test_output_dir_that_is_a_file(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "edge").write_text("not a dir")
    with pytest.raises(ConfigError, match=r"certificates\.edge\.output_dir: .* exists and is not a directory"):
        load_config(write_config(LOCAL_CA_CONFIG))


def test_all_errors_reported_at_once(write_config: WriteConfig) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config("[daemon]\nworkers = 0\ncheck_interval = 5\n"))
    assert len(str(info.value).splitlines()) == 2


def test_missing_referenced_files_are_warnings(write_config: WriteConfig, tmp_path: Path) -> None:
    path = write_config(
        "[database]\nkey_file = 'db.key'\n[issuers.v]\ntype = 'vault'\nurl = 'https://v:8200'\nrole = 'r'\n"
        "token_file = 'tok'\n"
    )
    warnings = check_files(load_config(path))
    assert any("database.key_file" in w and "does not exist" in w for w in warnings)
    assert any("issuers.v.token_file" in w for w in warnings)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


DEEP = "malformed TOML: nested too deeply"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", DEEP, id="deep-arrays"),
        pytest.param(b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n", DEEP, id="deep-tables"),
        pytest.param(b'[database]\nurl = "\xff\xfe"\n', "cannot read config: 'utf-8' codec can't decode",
                     id="not-utf8"),
        pytest.param(b"[database]\nurl = 'x'\x00\n", "malformed TOML", id="nul-byte"),
    ],
)
def test_a_config_file_that_is_not_toml_is_exit_2_naming_the_file(tmp_path: Path, content: bytes,
                                                                   expected: str) -> None:
    """Through the real CLI: one line naming the file, exit 2, no traceback, nothing created."""
    from tests.test_cli import certd

    path = tmp_path / "certd.toml"
    path.write_bytes(content)
    for command in (("check-config",), ("renew", "--all"), ("list",)):
        proc = certd(*command, config=path)
        assert proc.returncode == 2, (command, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"error: {path}: {expected}"), proc.stderr[:300]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certd.toml"]


def test_a_config_path_that_is_a_directory(tmp_path: Path) -> None:
    from tests.test_cli import certd

    proc = certd("list", config=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {tmp_path}: cannot read config: ")
    assert "Is a directory" in proc.stderr and "Traceback" not in proc.stderr
