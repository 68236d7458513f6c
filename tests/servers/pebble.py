"""Pebble (a real RFC 8555 ACME server) with pebble-challtestsrv, or a given DNS server, as its resolver.

Validation is always real (no PEBBLE_VA_ALWAYS_VALID): certd must actually answer HTTP-01 on `http01_port`
or publish DNS-01 TXT records where Pebble looks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from tests.servers import tlsutil
from tests.servers.ports import HOST, ServerProcess, free_port, make_workdir, tcp_open


class PebbleServer:
    def __init__(
        self,
        *,
        nonce_reject: int = 5,
        dns_server: str | None = None,
        workdir: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        certificate_validity: int | None = None,
        eab_keys: Mapping[str, str] | None = None,
        blocked_domains: Sequence[str] = (),
    ) -> None:
        """extra_env is for knobs like PEBBLE_AUTHZREUSE=0 (Pebble reuses valid authzs 50% of the time).

        certificate_validity (seconds) sets Pebble's certificateValidityPeriod, for short-lived certificates.
        eab_keys ({kid: base64url HMAC key}) makes External Account Binding required with those keys;
        blocked_domains are refused with rejectedIdentifier (Pebble's domainBlocklist).
        """
        self.eab_keys = dict(eab_keys or {})
        self.blocked_domains = list(blocked_domains)
        self.certificate_validity = certificate_validity
        if extra_env and "PEBBLE_VA_ALWAYS_VALID" in extra_env:
            raise ValueError("PEBBLE_VA_ALWAYS_VALID would skip the validation these tests exist to exercise")
        self.extra_env = dict(extra_env or {})
        self.pid = 0
        self.workdir = workdir or make_workdir("pebble")
        self._own_workdir = workdir is None
        self._procs: list[ServerProcess] = []
        self.nonce_reject = nonce_reject
        ca = tlsutil.make_ca("certd test Pebble listener CA")
        files = tlsutil.write_server_files(self.workdir, tlsutil.issue_server_cert(ca), ca)
        self.ca_bundle: Path = files["ca"]
        acme_port, mgmt_port, self.http01_port, self.tls_alpn01_port = (free_port() for _ in range(4))
        self.directory_url = f"https://{HOST}:{acme_port}/dir"
        self.mgmt_url = f"https://{HOST}:{mgmt_port}"
        self.challtestsrv_url: str | None = None
        try:
            if dns_server is None:
                dns_server = self._start_challtestsrv()
            self.dns_server = dns_server
            self._files, self._acme_port, self._mgmt_port = files, acme_port, mgmt_port
            self._start_pebble(files, acme_port, mgmt_port)
        except BaseException:
            self.stop()
            raise

    def _start_challtestsrv(self) -> str:
        """Only the DNS part: certd itself serves HTTP-01, and challtestsrv's listeners would steal its port."""
        dns_port, mgmt_port = free_port(udp_too=True), free_port()
        argv = [
            "pebble-challtestsrv",
            "-dns01",
            f"{HOST}:{dns_port}",
            "-management",
            f"{HOST}:{mgmt_port}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            # Default AAAA answer is ::1, and Pebble would then validate over IPv6 where nothing listens.
            "-defaultIPv6",
            "",
            "-defaultIPv4",
            HOST,
        ]
        proc = ServerProcess("pebble-challtestsrv", argv, self.workdir / "challtestsrv.log")
        self._procs.append(proc)
        proc.wait_until(lambda: tcp_open(mgmt_port) and tcp_open(dns_port), "challtestsrv DNS + management ports")
        self.challtestsrv_url = f"http://{HOST}:{mgmt_port}"
        return f"{HOST}:{dns_port}"

    def _start_pebble(self, files: dict[str, Path], acme_port: int, mgmt_port: int) -> None:
        config = {
            "pebble": {
                "listenAddress": f"{HOST}:{acme_port}",
                "managementListenAddress": f"{HOST}:{mgmt_port}",
                "certificate": str(files["fullchain"]),
                "privateKey": str(files["key"]),
                "httpPort": self.http01_port,
                "tlsPort": self.tls_alpn01_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": bool(self.eab_keys),
                "externalAccountMACKeys": self.eab_keys,
                "domainBlocklist": self.blocked_domains,
            }
        }
        if self.certificate_validity is not None:
            config["pebble"]["certificateValidityPeriod"] = self.certificate_validity
        conf = self.workdir / "pebble.json"
        conf.write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT=str(self.nonce_reject), **self.extra_env)
        proc = ServerProcess(
            "pebble",
            ["pebble", "-config", str(conf), "-dnsserver", self.dns_server],
            self.workdir / "pebble.log",
            env=env,
            cwd=self.workdir,
        )
        self._procs.append(proc)
        proc.wait_until(
            lambda: requests.get(self.directory_url, verify=str(self.ca_bundle), timeout=2).ok,
            f"ACME directory {self.directory_url}",
        )
        self.pid = proc.pid

    @property
    def acme_port(self) -> int:
        return self._acme_port

    def restart(self) -> None:
        """Stop Pebble and start it again on the same ports: every account and order is lost, and the root is
        new (a CA reset; a real CA would keep its root, so a test trusts both)."""
        self.down()
        self.up()

    def down(self) -> None:
        """Stop Pebble (its state is gone with it); ``up`` starts it again on the same ports."""
        pebble = next(p for p in self._procs if p.name == "pebble")
        pebble.stop()
        self._procs.remove(pebble)

    def up(self) -> None:
        self._start_pebble(self._files, self._acme_port, self._mgmt_port)

    def _mgmt_get(self, path: str) -> bytes:
        resp = requests.get(f"{self.mgmt_url}{path}", verify=str(self.ca_bundle), timeout=10)
        resp.raise_for_status()
        return resp.content

    def roots_pem(self) -> bytes:
        """The root that signs issued certificates (not the listener CA in ca_bundle): changes every start."""
        return self._mgmt_get("/roots/0")

    def intermediates_pem(self) -> bytes:
        return self._mgmt_get("/intermediates/0")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
