"""How many worker processes this machine lets a run start: one answer for train and prepare.

``--workers 300`` used to end in a traceback where the user's process limit (``ulimit -u``) or a
container's ``pids.max`` was lower: here the request is clamped, with one warning, before any
process starts. Worker processes also cannot start when the main script came from standard input
(``python -``): spawned workers re-import ``__main__`` from its file, and there is none.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Tasks (processes and threads: both count against RLIMIT_NPROC and pids.max) one worker uses:
# its main thread, the parent watcher, OpenCV's and the pipe's helpers, with room to spare.
TASKS_PER_WORKER = 4
# Left free for the trainer's own new threads (framework thread pools, TensorBoard writer).
RESERVED_TASKS = 32
CGROUP_PIDS = ("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max")

_warned: set[str] = set()
_refused: str | None = None  # why workers could not start earlier in this process


@dataclass(frozen=True)
class ProcessBudget:
    """What limits the number of worker processes (None: no limit of that kind).

    Args:
        cpus: cores this process may run on; more workers than cores only add memory.
        nproc_limit: the soft RLIMIT_NPROC (``ulimit -u``), when it applies to this user.
        nproc_used: tasks (threads included) this user runs now.
        pids_limit: the cgroup's ``pids.max``.
        pids_used: the cgroup's ``pids.current``.
    """

    cpus: int
    nproc_limit: int | None = None
    nproc_used: int = 0
    pids_limit: int | None = None
    pids_used: int = 0


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # taskset, Slurm and cpusets narrow it
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _user_tasks() -> int:
    """Threads of every process of this user (what RLIMIT_NPROC counts on Linux)."""
    import psutil

    uid, total = os.getuid(), 0
    for process in psutil.process_iter(["uids", "num_threads"]):
        info = process.info
        if info.get("uids") is not None and info["uids"].real == uid:
            total += info.get("num_threads") or 1
    return total


def _nproc() -> tuple[int | None, int]:
    try:
        import resource
    except ImportError:  # Windows
        return None, 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    # The kernel does not enforce the limit for root (nor with CAP_SYS_RESOURCE).
    if soft == resource.RLIM_INFINITY or os.getuid() == 0:
        return None, 0
    try:
        return int(soft), _user_tasks()
    except Exception:  # psutil cannot read /proc: assume the limit is all in use but the trainer
        return int(soft), 0


def _cgroup_pids() -> tuple[int | None, int]:
    for path in CGROUP_PIDS:
        try:
            with open(path, encoding="ascii") as handle:
                limit = handle.read().strip()
            with open(os.path.join(os.path.dirname(path), "pids.current"),
                      encoding="ascii") as handle:
                used = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        return (None if limit == "max" else int(limit)), used
    return None, 0


def read_budget() -> ProcessBudget:
    """This machine's limits, read now."""
    nproc_limit, nproc_used = _nproc()
    pids_limit, pids_used = _cgroup_pids()
    return ProcessBudget(_cpus(), nproc_limit, nproc_used, pids_limit, pids_used)


def allowed_workers(requested: int, budget: ProcessBudget) -> tuple[int, str]:
    """(workers that fit, the limit that decided when it is fewer than ``requested``)."""
    limits = [(budget.cpus, f"{budget.cpus} CPU cores")]
    if budget.nproc_limit is not None:
        room = budget.nproc_limit - budget.nproc_used - RESERVED_TASKS
        limits.append((room // TASKS_PER_WORKER,
                       f"the process limit (ulimit -u {budget.nproc_limit}, "
                       f"{budget.nproc_used} in use)"))
    if budget.pids_limit is not None:
        room = budget.pids_limit - budget.pids_used - RESERVED_TASKS
        limits.append((room // TASKS_PER_WORKER,
                       f"the container's pids.max ({budget.pids_limit}, "
                       f"{budget.pids_used} in use)"))
    count, reason = min(limits, key=lambda item: item[0])
    if count >= requested:
        return requested, ""
    return max(0, count), reason


def unimportable_main() -> str | None:
    """Why spawned workers cannot re-import the main script, or None when they can.

    A spawned worker runs ``__main__``'s file again (``__mp_main__``); ``python -`` sets that
    file to ``<stdin>``, which is not a file, and every worker dies at start.
    """
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return None  # python -m package.module: re-imported by name
    path = getattr(main, "__file__", None)
    if path is None:
        return None  # python -c, a REPL, a notebook: nothing to re-import
    if path == "<stdin>":
        return "the script comes from standard input"
    if not os.path.isfile(path):
        return f"its main script '{path}' is not a file"
    return None


def workers_refused(message: str) -> None:
    """Not one worker could start: warn, and work in the main process from now on."""
    global _refused
    _refused = message
    warn_once(message)


def warn_once(message: str) -> None:
    """A warning per process, however many loaders (train, validation, test) meet it."""
    if message not in _warned:
        _warned.add(message)
        logger.warning("%s", message)


def usable_workers(requested: int, option: str = "--workers",
                   budget: ProcessBudget | None = None) -> int:
    """``requested`` clamped to what the machine allows, with a warning when it is fewer;
    0 (work in the main process) when worker processes cannot start at all."""
    if requested <= 0:
        return 0
    if _refused is not None:
        return 0  # said once already; every new attempt would print the workers' errors again
    reason = unimportable_main()
    if reason:
        warn_once(f"worker processes could not start: {reason}; loading images in the main "
                  "process instead (slower). Save the script to a file and run `python "
                  "file.py` to use workers, or pass workers=0 to silence this")
        return 0
    count, limit = allowed_workers(requested, budget or read_budget())
    if count < requested:
        using = f"using {count}" if count else "working in the main process"
        warn_once(f"{option} {requested}: this machine allows {count} ({limit}); {using}")
    return count
