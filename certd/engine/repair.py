"""``certd deploy`` first puts back what was published, then deploys it.

A hook (or a person) may have removed a stable link, rewritten a file or widened the key's mode since the
version was published. Deploying such a set would hand the server a broken or exposed one and blame
whichever target ran first. The repair rebuilds the whole set from what certd recorded — the version's
certificate and chain from the inventory, its key from the generation when it still matches the leaf, else
from the inventory's sealed copy — into a fresh generation, so no byte the hook touched is reused; the
damaged generation is marked failed, so pruning removes it and nothing rolls back to it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certd.core.kinds import EventKind, Step
from certd.deploy.integrity import published_damage
from certd.deploy.publish import GEN_PREFIX, Generation
from certd.engine.attempt import Attempt
from certd.engine.rollout import Material
from certd.engine.services import Services
from certd.errors import DeployError
from certd.inventory.models import Version
from certd.pki.certs import load_pem_certs
from certd.pki.keys import key_pem, load_key_pem

__all__ = ["repaired"]

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _recorded_key(s: Services, attempt: Attempt, generation: Generation, version: Version) -> bytes:
    """The version's key: the generation's when it still matches the leaf, else the inventory's sealed copy."""
    leaf = load_pem_certs(version.cert_pem.encode())[0]
    want = leaf.public_key().public_bytes(*_SPKI)
    for candidate in _generations(attempt, generation, version):
        try:
            key = load_key_pem(candidate.read("privkey.pem"))
        except (OSError, ValueError):
            continue  # removed, rewritten or unreadable: the inventory's copy is the other source
        if key.public_key().public_bytes(*_SPKI) == want:
            return key_pem(key)
    if version.key_enc is not None and s.keybox.enabled:
        key = load_key_pem(s.keybox.open(version.key_enc, f"version:{attempt.name}:{version.serial}"))
        if key.public_key().public_bytes(*_SPKI) == want:
            return key_pem(key)
    raise DeployError(f"certificate {attempt.name}: the key of serial {version.serial} is no longer in "
                      f"{generation.path} and the inventory keeps no copy ([database] key_file unset): "
                      f"`certd renew {attempt.name} --force` publishes a fresh set", retryable=False)


def _generations(attempt: Attempt, current: Generation, version: Version) -> list[Generation]:
    """Where the version's files were written: the generation recorded for it, then whatever is current."""
    found = [current]
    if version.generation and version.generation != current.name:
        found.insert(0, Generation(version.generation, attempt.cfg.output_dir / version.generation))
    return found


def repaired(s: Services, attempt: Attempt, generation: Generation, version: Version,
             roots: tuple[x509.Certificate, ...]) -> Material:
    """The version's material, after making the published set whole again if anything had changed it."""
    cfg = attempt.cfg
    material = Material.of_version(version, _recorded_key(s, attempt, generation, version), roots)
    publisher = s.rollout.publisher(cfg)
    # The generation recorded for the version is this host's only where it exists here (an agent host
    # publishes its own generations of the issuing replica's version).
    recorded = version.generation if version.generation and (cfg.output_dir / version.generation).is_dir() \
        else None
    damage = published_damage(publisher, material.files(), recorded)
    if not damage:
        return material
    for old in _generations(attempt, generation, version):  # superseded by the fresh one: pruned below
        if old.name.startswith(GEN_PREFIX) and old.path.is_dir():  # never a directory certd did not make
            publisher.mark_failed(old)
    beat = attempt.beat
    if beat is not None:
        beat.fence()
    fresh = publisher.publish(version.serial, material.files())
    if beat is not None and (recorded is not None or version.generation is None):
        s.inventory.update_version(beat.lease, version.id, s.clock.now(), generation=fresh.name)
    exposed = (f"; the key was readable beyond its configured mode: `certd renew {attempt.name} --force` "
               "replaces it") if damage.exposed else ""
    s.recorder.event(attempt.name, EventKind.PUBLISH_REPAIRED, f"serial {version.serial} published again in "
                     f"{fresh.name}: {damage}{exposed}", attempt.rid, step=Step.DEPLOY, level="warning")
    return material
