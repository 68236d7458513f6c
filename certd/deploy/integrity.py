"""Is what certd published still what it published? Checked after every deploy target and before ``certd deploy``.

A deploy hook runs with write access to the output directory. One that rewrites ``cert.pem`` with another
certificate, truncates the chain, or runs ``chmod 0644`` on the key exits 0, and without this check certd
would report the version deployed while the files hold a broken set or a world-readable key. The check
compares the set reached through the stable paths with what certd wrote, byte for byte, and the layout and
modes with the certificate's configuration; it reads through ``certd.inputs`` (bounded, regular files only).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from certd.deploy.publish import DATA_LINK, FILES, KEY_FILES, PUBLIC_MODE, Publisher
from certd.inputs import read_file

__all__ = ["Damage", "published_damage"]


@dataclass(frozen=True)
class Damage:
    """What differs from what certd published; ``exposed`` when a key file became readable by more than configured."""

    problems: tuple[str, ...]
    exposed: bool = False

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __str__(self) -> str:
        return "; ".join(self.problems)


def published_damage(publisher: Publisher, files: dict[str, bytes], generation: str | None = None) -> Damage:
    """Compare ``publisher.output_dir`` with ``files`` (as ``file_set`` made them) and the publisher's settings.

    ``generation`` is the generation ``..data`` must still point at (the one this rollout switched to);
    ``None`` accepts any generation, for a check of whatever is current.
    """
    out = publisher.output_dir
    problems: list[str] = []
    exposed = False
    try:
        target = os.readlink(out / DATA_LINK)
    except OSError as exc:
        return Damage((f"{out / DATA_LINK} is no longer the link certd switches ({exc.strerror or exc})",))
    if generation is not None and target != generation:
        problems.append(f"{out / DATA_LINK} points at {target}, not at {generation} that certd switched to")
    if (out / target).is_symlink():  # the generation swapped for a link: the files served live elsewhere
        problems.append(f"{out / target} was replaced by a link to {os.readlink(out / target)}")
    for name in FILES:
        stable, inside = out / name, out / target / name
        try:
            link = os.readlink(stable)
        except FileNotFoundError:
            problems.append(f"{stable} is missing")
            continue
        except OSError:
            problems.append(f"{stable} was replaced by a file (certd publishes it as a link to {DATA_LINK}/{name})")
            continue
        if link != f"{DATA_LINK}/{name}":
            problems.append(f"{stable} now links to {link}, not to {DATA_LINK}/{name}")
            continue
        try:
            st = inside.lstat()
        except FileNotFoundError:
            problems.append(f"{stable} is missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{stable} is no longer a regular file")
            continue
        want_mode = publisher.key_mode if name in KEY_FILES else PUBLIC_MODE
        mode = stat.S_IMODE(st.st_mode)
        if mode != want_mode:
            problems.append(f"{stable} has mode {mode:04o}, certd published it {want_mode:04o} "
                            "(set mode, owner and group on the certificate instead of changing them in a hook)")
            exposed = exposed or (name in KEY_FILES and bool(mode & ~want_mode & 0o077))
        want_uid = publisher.uid if publisher.uid != -1 else os.geteuid()
        if st.st_uid != want_uid:
            problems.append(f"{stable} is owned by uid {st.st_uid}, certd published it for uid {want_uid}")
            exposed = exposed or name in KEY_FILES
        if publisher.gid != -1 and st.st_gid != publisher.gid:
            problems.append(f"{stable} has group gid {st.st_gid}, certd published it for gid {publisher.gid}")
            exposed = exposed or name in KEY_FILES
        want = files[name]
        if st.st_size == 0 and want:
            problems.append(f"{stable} is empty")
            continue
        if st.st_size != len(want):
            problems.append(f"{stable} no longer holds the published content")
            continue
        try:
            if read_file(inside, len(want) + 1) != want:
                problems.append(f"{stable} no longer holds the published content")
        except OSError as exc:
            problems.append(f"{stable} cannot be read ({exc.strerror or exc})")
    return Damage(tuple(problems), exposed)
