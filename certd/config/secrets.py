"""The one list of config keys that name a file holding a secret.

Three readers use it and must agree: the loader (an inline secret such as
``token = "..."`` is refused with a hint to the ``*_file`` key), the
scrubber (the file's contents become ``***`` in everything certd writes),
and ``check-config`` (a secret file readable by its group or by everyone is
a warning). Each key says which of these apply, and why where it differs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INLINE_HINTS", "MODE_CHECKED", "SCRUBBED", "SECRET_FILES", "SecretFile"]


@dataclass(frozen=True)
class SecretFile:
    key: str  # the config key naming the file
    inline: str | None = None  # the key an operator might write the secret under instead (refused)
    mode_checked: bool = True  # check-config warns when the file is readable by its group or by everyone


SECRET_FILES: tuple[SecretFile, ...] = (
    SecretFile("key_file"),  # [database]: seals private keys at rest
    SecretFile("api_token_file", inline="api_token"),
    SecretFile("api_tls_key_file"),
    SecretFile("tsig_secret_file", inline="tsig_secret"),
    SecretFile("eab_hmac_key_file", inline="eab_hmac_key"),
    SecretFile("token_file", inline="token"),
    SecretFile("secret_id_file", inline="secret_id"),
    SecretFile("secret_file", inline="secret"),  # webhook targets
    # AppRole's role_id: HashiCorp documents it as an identifier, not a credential, and it is commonly shipped
    # world-readable by configuration management, so its mode is not worth a warning. It is half of a login,
    # though, so it is scrubbed from what certd writes like the secret_id.
    SecretFile("role_id_file", inline="role_id", mode_checked=False),
    # The Kubernetes service-account token: kubelet decides its mode; it is a bearer credential, so scrubbed.
    SecretFile("jwt_file", mode_checked=False),
)

SCRUBBED: tuple[str, ...] = tuple(s.key for s in SECRET_FILES)
MODE_CHECKED: tuple[str, ...] = tuple(s.key for s in SECRET_FILES if s.mode_checked)
# An inline key -> the hint in its error ("secrets are read from files: use ...").
INLINE_HINTS: dict[str, str] = {s.inline: s.key for s in SECRET_FILES if s.inline} | {"password": "a *_file key"}
