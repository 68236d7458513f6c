"""A real BIND `named`, authoritative for example.test and accepting TSIG-signed RFC 2136 updates.

Used as certd's DNS-01 provider target and, via its wildcard A record, as Pebble's resolver for HTTP-01 too.
Caveat (plain DNS semantics): while `_acme-challenge.foo.example.test` exists, `foo.example.test` is an empty
non-terminal and the wildcard no longer answers for it (NODATA), so HTTP-01 for that name fails. Tests sharing
the session-scoped server should delete their TXT records afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from tests.servers.ports import HOST, ServerProcess, free_port, make_workdir

ZONE = "example.test"
KEY_NAME = "certd"
ALGORITHM = "hmac-sha256"

_ZONE_FILE = """\
$TTL 60
@       IN SOA  ns1.{zone}. hostmaster.{zone}. ( 1 3600 600 86400 60 )
@       IN NS   ns1.{zone}.
@       IN A    127.0.0.1
ns1     IN A    127.0.0.1
*       IN A    127.0.0.1
"""

# `controls {}` stops named from opening rndc on 127.0.0.1:953 (it would clash with a second instance);
# session-keyfile and managed-keys-directory would otherwise point into /run and /var/cache.
_NAMED_CONF = """\
include "{dir}/tsig.key";
options {{
    directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.zone";
    allow-update {{ key "{key}"; }};
}};
"""


class BindServer:
    def __init__(self, workdir: Path | None = None) -> None:
        # named drops to user `bind` and writes its .jnl journal here, so the directory must belong to bind.
        self.workdir = workdir or make_workdir("bind", owner="bind")
        self._own_workdir = workdir is None
        self.host, self.port = HOST, free_port(udp_too=True)
        self.address = f"{self.host}:{self.port}"
        self.zone, self.tsig_key_name, self.tsig_algorithm = ZONE, KEY_NAME, ALGORITHM
        key_text = subprocess.run(
            ["tsig-keygen", "-a", ALGORITHM, KEY_NAME], check=True, capture_output=True, text=True
        ).stdout
        match = re.search(r'secret "([^"]+)"', key_text)
        if match is None:
            raise RuntimeError(f"unexpected tsig-keygen output: {key_text!r}")
        self.tsig_secret = match.group(1)
        self.tsig_secret_file = self.workdir / "tsig.secret"
        self.tsig_secret_file.write_text(self.tsig_secret + "\n")
        (self.workdir / "tsig.key").write_text(key_text)
        (self.workdir / f"{ZONE}.zone").write_text(_ZONE_FILE.format(zone=ZONE))
        conf = self.workdir / "named.conf"
        conf.write_text(_NAMED_CONF.format(dir=self.workdir, port=self.port, zone=ZONE, key=KEY_NAME))
        if os.geteuid() == 0:
            for path in self.workdir.iterdir():
                shutil.chown(path, "bind", "bind")
        argv = ["named", "-g", "-c", str(conf)] + (["-u", "bind"] if os.geteuid() == 0 else [])
        self._proc = ServerProcess("named", argv, self.workdir / "named.log")
        self.pid = self._proc.pid
        try:
            self._proc.wait_until(self._answers_soa, f"SOA {ZONE} on {self.address}")
        except BaseException:
            self.stop()
            raise

    def _answers_soa(self) -> bool:
        query = dns.message.make_query(ZONE, dns.rdatatype.SOA)
        reply = dns.query.udp(query, self.host, port=self.port, timeout=0.5)
        return bool(reply.answer)

    def stop(self) -> None:
        self._proc.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
