"""``signal`` target: tell a process (nginx, envoy, …) to re-read its files.

A pid file is only a number, and numbers are reused: after the daemon dies
its pid file stays behind and the next process to get that pid (a ``sleep``,
a kernel thread, somebody's shell) would get our signal. So before
signalling, certd confirms from ``/proc`` that the process is the one that
wrote the file:

- it did not start later than the pid file was written (a daemon writes its
  pid file after it starts; ``_START_TOLERANCE`` absorbs the coarse boot
  time and clock ticks), so a pid reused after the file was written is
  refused;
- it is a user-space process (not a kernel thread, not a zombie);
- with ``process_name``, its ``comm`` or the basename of its ``argv[0]`` is
  that name, which also catches a pid file that names the wrong program.

The process is pinned with a pidfd before it is inspected and signalled
through that pidfd, so it cannot exit and be replaced between the check and
the signal. Without ``/proc`` nothing can be confirmed and nothing is
signalled. ``unit`` uses ``systemctl reload``, which waits for the unit's
reload to finish and needs none of this (systemd tracks its own processes).
"""

from __future__ import annotations

import os
import re
import signal as _signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from certd.config.model import SignalDeployConfig
from certd.deploy.base import DeployContext
from certd.errors import DeployError, TargetAbsent

__all__ = ["SignalTarget"]

_PROC = Path("/proc")
_PF_KTHREAD = 0x00200000  # include/linux/sched.h: "I am a kernel thread"
_START_TOLERANCE = 2.0  # seconds; btime is whole seconds, start time is in clock ticks
_PID_MAX = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
_PID_RE = re.compile(r"[0-9]{1,7}")
_COMM_LEN = 15  # TASK_COMM_LEN - 1: the kernel truncates comm to this


def _signal_number(name: str) -> _signal.Signals:
    key = name.upper()
    key = key if key.startswith("SIG") else "SIG" + key
    try:
        return _signal.Signals[key]
    except KeyError as exc:
        raise DeployError(f"unknown signal {name!r}", retryable=False) from exc


@dataclass(frozen=True)
class _Process:
    """What /proc says about one pid, read once."""

    state: str
    kernel_thread: bool
    has_cmdline: bool
    started: float  # Unix time
    comm: str
    argv0: str


def _boot_time() -> float:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _inspect(pid: int) -> _Process:
    """Read /proc/<pid>; raises ``FileNotFoundError`` when the process is gone, ``OSError`` otherwise."""
    base = _PROC / str(pid)
    raw = (base / "stat").read_bytes()
    # comm (field 2) is in parentheses and may itself contain spaces and ")": split after the last one.
    head, _, rest = raw.rpartition(b")")
    comm = head.partition(b"(")[2].decode(errors="replace")
    fields = rest.split()  # fields[0] is field 3 (state)
    state, flags, start_ticks = fields[0].decode(), int(fields[6]), int(fields[19])
    started = _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    argv0 = (base / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    kernel_thread = bool(flags & _PF_KTHREAD)
    if not kernel_thread and state != "Z":
        try:
            os.readlink(base / "exe")
        except FileNotFoundError:  # user processes have one; EACCES (another user's) proves nothing
            if not (base / "stat").exists():
                raise  # it exited while we looked
            kernel_thread = True
        except OSError:
            pass
    return _Process(state=state, kernel_thread=kernel_thread, has_cmdline=bool(argv0), started=started, comm=comm,
                    argv0=argv0)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _name_matches(proc: _Process, wanted: str) -> bool:
    return proc.comm in (wanted, wanted[:_COMM_LEN]) or os.path.basename(proc.argv0) == wanted


def _refusal(proc: _Process, written: float, process_name: str | None) -> str | None:
    """Why this process is not the one the pid file meant, or ``None`` if it may be."""
    if proc.state in ("Z", "X"):
        return "has exited (zombie)"
    if proc.kernel_thread:
        return f"is a kernel thread ({proc.comm!r})"
    if not proc.has_cmdline:  # kernel threads have none; a process that erased its own is no better a target
        return f"has no command line ({proc.comm!r})"
    late = proc.started - written
    if late > _START_TOLERANCE:
        return f"started {late:.0f} s after the file was written: stale pid file"
    if process_name is not None and not _name_matches(proc, process_name):
        return f"is {proc.comm!r} (argv[0] {proc.argv0[:100]!r}) where process_name is {process_name!r}"
    return None


class SignalTarget:
    """Send a signal to the process that wrote ``pid_file``, or reload a systemd unit."""

    def __init__(self, name: str, config: SignalDeployConfig) -> None:
        self.name = name
        self._config = config
        self._signal = _signal_number(config.signal)

    def _read_pid(self, pid_file: Path) -> tuple[int, float]:
        """The pid and the file's mtime, from one open (a FIFO or a huge file must not hang or flood us)."""
        try:
            fd = os.open(pid_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise TargetAbsent(f"deploy {self.name}: pid file {pid_file} does not exist") from exc
        except OSError as exc:
            raise DeployError(f"deploy {self.name}: cannot read pid file {pid_file}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DeployError(f"deploy {self.name}: pid file {pid_file} is not a regular file")
            text = os.read(fd, 64).decode("ascii", errors="replace").strip()
        except OSError as exc:
            raise DeployError(f"deploy {self.name}: cannot read pid file {pid_file}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if _PID_RE.fullmatch(text) and int(text) == 1:
            raise DeployError(f"deploy {self.name}: pid file {pid_file} names pid 1 (init): certd never signals "
                              "it; is this the pid file the server writes?", retryable=False)
        if not _PID_RE.fullmatch(text) or not 1 < int(text) <= _PID_MAX:
            raise DeployError(f"deploy {self.name}: pid file {pid_file} does not hold a pid")
        pid = int(text)
        # certd itself (a TERM would kill it mid-deploy with its lease held and nothing recorded), or whatever
        # started it (a shell, systemd's manager, the test runner): never the server a deploy reloads.
        # A thread's id signals its whole process (kill(2) with a tid reaches the thread group): the
        # threads of certd are certd.
        itself = pid == os.getpid() or Path(f"/proc/self/task/{pid}").exists()
        if itself or pid == os.getppid() or os.getpgid(0) == pid:
            who = "certd itself" if itself else "the process that started certd"
            raise DeployError(f"deploy {self.name}: pid file {pid_file} names pid {pid}, {who}: certd never "
                              "signals it; is this the pid file the server writes?", retryable=False)
        return pid, st.st_mtime

    def _not_running(self, pid: int) -> DeployError:
        # A server that is down reads the published files when it starts: "absent", not refused.
        return TargetAbsent(f"deploy {self.name}: process {pid} from {self._config.pid_file} is not running")

    def deploy(self, ctx: DeployContext) -> str:
        if self._config.unit:
            return self._reload_unit(self._config.unit)
        assert self._config.pid_file is not None
        pid, written = self._read_pid(self._config.pid_file)
        pidfd = self._pin(pid)
        try:
            self._confirm(pid, written)
            try:
                if pidfd is not None:
                    _signal.pidfd_send_signal(pidfd, self._signal)
                else:
                    os.kill(pid, self._signal)
            except ProcessLookupError as exc:
                raise self._not_running(pid) from exc
            except PermissionError as exc:
                raise DeployError(f"deploy {self.name}: not allowed to signal process {pid}") from exc
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return f"sent {self._signal.name} to pid {pid}"

    def _pin(self, pid: int) -> int | None:
        """A pidfd for ``pid`` (``None`` where the kernel has none): from here on the number cannot change hands."""
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError as exc:
            raise self._not_running(pid) from exc
        except (AttributeError, OSError):
            pass
        if not _exists(pid):  # EPERM counts as existing: whether we may signal it is decided when we do
            raise self._not_running(pid)
        return None

    def _confirm(self, pid: int, written: float) -> None:
        pid_file = self._config.pid_file
        try:
            proc = _inspect(pid)
        except FileNotFoundError as exc:
            if pid_file is not None and not (_PROC / "self").exists():
                raise DeployError(
                    f"deploy {self.name}: /proc is not available, cannot confirm pid {pid} from {pid_file} "
                    "is the process that wrote it: not signalling", retryable=False) from exc
            if _exists(pid):
                raise DeployError(f"deploy {self.name}: pid {pid} from {pid_file} is not visible in /proc "
                                  "(mounted with hidepid?): cannot confirm it, not signalling") from exc
            raise self._not_running(pid) from exc
        except (OSError, ValueError, IndexError) as exc:
            raise DeployError(
                f"deploy {self.name}: cannot inspect /proc/{pid} to confirm pid {pid} from {pid_file}: {exc}: "
                "not signalling") from exc
        why = _refusal(proc, written, self._config.process_name)
        if why is not None:
            raise DeployError(f"deploy {self.name}: pid {pid} from {pid_file} {why}, not signalling")

    def _reload_unit(self, unit: str) -> str:
        try:
            proc = subprocess.run(
                ["systemctl", "reload", unit],
                capture_output=True,
                text=True,
                timeout=self._config.timeout.total_seconds(),
                check=False,
            )
        except FileNotFoundError as exc:
            raise DeployError(f"deploy {self.name}: systemctl is not available on this host") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeployError(f"deploy {self.name}: systemctl reload {unit} timed out") from exc
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DeployError(f"deploy {self.name}: systemctl reload {unit} failed: {detail[0]}")
        return f"reloaded unit {unit}"


def build(name: str, config: SignalDeployConfig) -> SignalTarget:
    return SignalTarget(name, config)
