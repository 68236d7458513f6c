"""OpenBao's PKI engine as an ACME server (RFC 8555): a second, independent ACME implementation next to Pebble.

``OpenBaoAcme(server, mount)`` gives ``mount`` its own intermediate (signed by the server's ``pki-root``, so
certd pins ``server.root_pem()`` as for the Vault issuer) and turns ACME on there, the way an operator does:

* ``<mount>/config/cluster``: ``path`` and ``aia_path`` (the directory's URLs are built from them);
* a role the directory issues under (``default_directory_policy=role:<r>``, ``allowed_roles=<r>``);
* ``<mount>/config/acme``: ``enabled``, optionally ``eab_policy`` and ``dns_resolver``;
* the mount tuned to pass ``Replay-Nonce``, ``Location``, ``Link`` and ``Last-Modified`` back to clients and
  ``If-Modified-Since`` through to the engine (OpenBao strips them otherwise and no ACME client works).

Each feature gets a mount of its own (``pki-acme``, ``pki-acme-eab``, ``pki-acme-dns``...) so that requiring EAB
or changing the resolver on one never changes what another test sees; the shared ``pki`` mount is not touched.

What OpenBao does: HTTP-01 on port 80 of the identifier (only port 80; resolved with the system resolver, or with
``dns_resolver``, which is then used for HTTP-01 names too), DNS-01 through ``dns_resolver``, IP identifiers,
EAB (``<mount>/acme/new-eab``). What it does not: ARI (no ``renewalInfo``), revocation reason codes
(``badRevocationReason``), account key change (``keyChange`` is listed but answers 404). Quirks: an IP-only order
needs the address in the role's ``allowed_domains`` (OpenBao makes it the CN and checks it as a host name; it also
adds it as a DNS SAN); a wrong EAB HMAC is a 500 (``serverInternal``); a failing HTTP-01 is retried ~100 s.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import requests
from cryptography import x509

from tests.servers import openbao_setup as setup
from tests.servers.openbao import OpenBaoServer
from tests.servers.ports import ServerError

__all__ = ["ACME_ROLE", "HTTP01_PORT", "IP_ROLE", "ROLE_PARAMS", "OpenBaoAcme", "port80_free"]

ACME_ROLE = "acme"
IP_ROLE = "acme-ip"
ROLE_PARAMS: dict[str, Any] = {
    "allowed_domains": ["localhost", "example.test"], "allow_bare_domains": True, "allow_subdomains": True,
    "allow_localhost": True, "allow_ip_sans": True, "allow_wildcard_certificates": True,
    "key_type": "any",  # the default is rsa, and certd's keys are EC unless configured otherwise
    "ttl": "1h", "max_ttl": "24h",
}
HTTP01_PORT = 80  # OpenBao validates HTTP-01 only there (RFC 8555 section 8.3); it has no setting for it
_RESPONSE_HEADERS = ["Replay-Nonce", "Location", "Link", "Last-Modified"]


def port80_free() -> str | None:
    """None when 127.0.0.1:80 can be bound by this process, else why not (the caller skips with it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", HTTP01_PORT))
    except PermissionError:
        return "binding 127.0.0.1:80 needs root or CAP_NET_BIND_SERVICE (OpenBao validates HTTP-01 only on port 80)"
    except OSError as exc:
        return f"127.0.0.1:80 is in use ({exc.strerror}); OpenBao validates HTTP-01 only on port 80"
    finally:
        sock.close()
    return None


class OpenBaoAcme:
    """ACME on one PKI mount of a running ``OpenBaoServer``; ``directory_url`` is what certd is given."""

    def __init__(self, server: OpenBaoServer, mount: str = "pki-acme", *, eab_required: bool = False,
                 dns_resolver: str | None = None, role: str = ACME_ROLE, **role_params: Any) -> None:
        self.server, self.mount, self.role = server, mount, role
        self.base = f"{server.url}/v1/{mount}"
        self.directory_url = f"{self.base}/acme/directory"
        self.ca_bundle_path = server.ca_bundle_path  # the listener's CA: certd's ca_bundle for this directory
        api = server.api
        api(f"sys/mounts/{mount}", {"type": "pki", "config": {"max_lease_ttl": "43800h"}})
        self.issuer_id = setup.sign_intermediate(api, mount, f"certd test OpenBao ACME {mount}", "acme")
        api(f"{mount}/config/issuers", {"default": self.issuer_id})
        api(f"{mount}/config/cluster", {"path": self.base, "aia_path": self.base})
        params = ROLE_PARAMS | role_params
        self.add_role(role, **params)
        # certd's CSR for IP-only names has no CN; OpenBao copies the first identifier into it and then checks the
        # CN as a host name against allowed_domains, so an IP-only order needs the IP listed there (and OpenBao
        # then also writes it as a DNS SAN next to the IP SAN, whatever exclude_cn_from_sans says).
        self.add_role(IP_ROLE, **(params | {"allowed_domains": [*params["allowed_domains"], "127.0.0.1"]}))
        acme: dict[str, Any] = {"enabled": True, "default_directory_policy": f"role:{role}",
                                "allowed_roles": [role, IP_ROLE],
                                "eab_policy": "always-required" if eab_required else "not-required"}
        if dns_resolver is not None:
            acme["dns_resolver"] = dns_resolver
        api(f"{mount}/config/acme", acme)
        api(f"sys/mounts/{mount}/tune", {"allowed_response_headers": _RESPONSE_HEADERS,
                                         "passthrough_request_headers": ["If-Modified-Since"]})

    def role_directory_url(self, role: str) -> str:
        """The directory that issues under ``role`` (it must be in ``allowed_roles``)."""
        return f"{self.base}/roles/{role}/acme/directory"

    def add_role(self, name: str, **params: Any) -> str:
        self.server.api(f"{self.mount}/roles/{name}", params)
        return name

    def root_pem(self) -> str:
        """The root the mount's intermediate chains to: what certd pins as ``roots``."""
        return self.server.root_pem()

    def directory(self) -> dict[str, Any]:
        resp = requests.get(self.directory_url, verify=str(self.ca_bundle_path), timeout=10)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def new_eab(self) -> tuple[str, str]:
        """A fresh External Account Binding for this mount's directory: ``(kid, base64url HMAC key)``."""
        data = self.server.api(f"{self.mount}/acme/new-eab", {})["data"]
        return str(data["id"]), str(data["key"])

    def crl(self) -> x509.CertificateRevocationList:
        """This mount's CRL, rebuilt first so it shows revocations made a moment ago."""
        self.server.api(f"{self.mount}/crl/rotate", method="GET")
        resp = requests.get(f"{self.base}/crl/pem", verify=str(self.ca_bundle_path), timeout=10)
        resp.raise_for_status()
        return x509.load_pem_x509_crl(resp.content)

    def revoked_serials(self) -> set[int]:
        return {entry.serial_number for entry in self.crl()}

    def certificate_record(self, serial: int) -> dict[str, Any]:
        """OpenBao's own record of an issued certificate (``revocation_time`` is set once it is revoked)."""
        hexed = f"{serial:x}"
        hexed = hexed.zfill(len(hexed) + len(hexed) % 2)
        colon = ":".join(hexed[i:i + 2] for i in range(0, len(hexed), 2))
        data: dict[str, Any] = self.server.api(f"{self.mount}/cert/{colon}", method="GET")["data"]
        return data

    def close(self) -> None:
        """Disable the mount (its issuers, certificates and ACME accounts go with it); the server stays up."""
        with contextlib.suppress(ServerError, requests.RequestException):  # the server may be gone already
            self.server.api(f"sys/mounts/{self.mount}", method="DELETE")
