"""Is a process still the one that registered? Pid plus start time, so a reused pid is not mistaken for it.
And how much CPU has a process used, and does any process use a file?"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat (state first), [] where /proc is unreadable, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return [] if _pid_exists(pid) else None
    # The command name (field 2) may hold spaces and parentheses; the fields after it are plain.
    return stat[stat.rindex(b")") + 2 :].split()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), 0 if unknown, None if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return int(fields[19]) if fields else 0


def run_state(pid: int) -> str | None:
    """The kernel's one-letter state (R, S, D, T, Z, ...), "" if unknown, None if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return fields[0].decode() if fields else ""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far, all its threads (fields 14 and 15)."""
    fields = _stat_fields(pid)
    if not fields:
        raise ProcessLookupError(f"/proc/{pid}/stat cannot be read: process {pid} is gone or not ours to look into")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_alive(pid: int, registered_start_time: int) -> bool:
    """True while `pid` runs and is the process that registered with `registered_start_time`."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if not fields:
        return True
    if registered_start_time and int(fields[19]) != registered_start_time:
        return False
    return fields[0] != b"Z"


def owner_is_alive(owner: int) -> bool:
    """True while the process a record's owner word names (shmq.layout.owner_word) runs.

    The word holds the low 32 bits of the start time, so a reused pid is told apart as in is_alive.
    """
    pid, start_low = owner & 0xFFFFFFFF, owner >> 32
    fields = _stat_fields(pid) if pid > 0 else None
    if fields is None:
        return False
    if not fields:
        return True
    if start_low and int(fields[19]) & 0xFFFFFFFF != start_low:
        return False
    return fields[0] != b"Z"


def in_use(path: str) -> bool:
    """Whether some process maps `path` or holds it open. A process whose /proc entries this one may not
    read (another user's, or one made non-dumpable) is not counted: shmq participants run as the
    segment's user (segments are private to it), and Python processes are dumpable."""
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            # Descriptors before maps: a creator opens, maps, then closes, so one of the two shows it.
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    return True
            with open(f"/proc/{pid}/maps") as f:
                if any(line.rstrip("\n").removesuffix(" (deleted)").endswith(" " + path) for line in f):
                    return True
        except (FileNotFoundError, PermissionError):  # gone while we looked, or not ours to look into
            continue
    return False
