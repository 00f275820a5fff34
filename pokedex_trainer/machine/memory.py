"""How much memory this process may still use, for every check made before heavy work.

The machine's free memory is not enough: in a container, a Slurm job or a systemd slice the
kernel kills the process (exit 137) when its cgroup reaches its limit, long before the
machine runs out. So the room is the smaller of the two: the machine's available memory, and
what is left under the tightest memory limit of this process's cgroup and of its parents
(cgroup v2 ``memory.max``, cgroup v1 ``memory.limit_in_bytes``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pokedex_trainer.errors import UserError

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def _own_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in the v1 memory hierarchy."""
    v2 = v1 = None
    try:
        lines = self_cgroup.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _folders(base: Path, own: str) -> list[Path]:
    """``base/own`` and each parent up to ``base``: a parent's limit binds its children too.
    In a container the path seen in /proc is the host's; then ``base`` itself is the
    container's cgroup."""
    folder = base / own.strip("/")
    if not folder.is_dir():
        return [base]
    chain = [folder]
    while folder != base and base in folder.parents:
        folder = folder.parent
        chain.append(folder)
    return chain


def cgroup_room(root: Path | None = None, self_cgroup: Path | None = None,
                all_cache: bool = False) -> int | None:
    """Bytes left under the tightest cgroup memory limit of this process; None without one.

    Memory the kernel can drop at once (inactive file cache) counts as left, as the kernel
    reclaims it before it kills anything; ``all_cache``: the active file cache too (what the
    kernel reclaims, more slowly, before it kills: the out-of-memory watcher's measure)."""
    rooms = [limit - used for limit, used in _limits(root, self_cgroup, all_cache)]
    return max(min(rooms), 0) if rooms else None


def cgroup_limit(root: Path | None = None, self_cgroup: Path | None = None) -> int | None:
    """The tightest cgroup memory limit of this process in bytes; None without one."""
    limits = [limit for limit, _ in _limits(root, self_cgroup)]
    return min(limits) if limits else None


def _limits(root: Path | None, self_cgroup: Path | None,
            all_cache: bool = False) -> list[tuple[int, int]]:
    """(limit, used) of every cgroup level of this process that has a memory limit."""
    if os.name != "posix":
        return []
    root = Path(CGROUP_ROOT if root is None else root)
    v2, v1 = _own_paths(Path(SELF_CGROUP if self_cgroup is None else self_cgroup))
    found = []
    if v2 is not None:
        for folder in _folders(root, v2):
            limit = _read_int(folder / "memory.max")
            if limit is not None and limit < _UNLIMITED:
                used = _read_int(folder / "memory.current") or 0
                used -= _stat_value(folder / "memory.stat",
                                    "file" if all_cache else "inactive_file")
                found.append((limit, max(used, 0)))
    if v1 is not None:
        for folder in _folders(root / "memory", v1):
            limit = _read_int(folder / "memory.limit_in_bytes")
            if limit is not None and limit < _UNLIMITED:
                used = _read_int(folder / "memory.usage_in_bytes") or 0
                used -= _stat_value(folder / "memory.stat",
                                    "total_cache" if all_cache else "total_inactive_file")
                found.append((limit, max(used, 0)))
    return found


def memory_available(root: Path | None = None, self_cgroup: Path | None = None) -> int:
    """Bytes this process may still use: the machine's available memory or the room left
    under its cgroup limit, whichever is smaller (``root``, ``self_cgroup``: for tests)."""
    import psutil

    machine = psutil.virtual_memory().available
    room = cgroup_room(root, self_cgroup) if os.name == "posix" else None
    return machine if room is None else min(machine, room)


def peak_resident_mb() -> float:
    """Peak resident memory of this process in MB. On Linux from VmHWM: ru_maxrss survives
    fork and exec, so a child started by a large parent would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import psutil

    info = psutil.Process().memory_info()
    if hasattr(info, "peak_wset"):  # Windows
        return info.peak_wset / 2**20
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def gigabytes(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**28 else f"{nbytes / 2**20:.0f} MiB"


def input_bytes(batch: int, image_size: tuple[int, int]) -> int:
    """A batch of RGB input pixels as float32, the least a forward pass holds."""
    height, width = image_size
    return batch * height * width * 3 * 4


def refuse_unless_fits(need: int, what: str, advice: str) -> None:
    """Raise one line when ``need`` bytes exceed what this process may still use."""
    room = memory_available()
    if need > room:
        raise UserError(f"{what} needs about {gigabytes(need)} of memory, more than the "
                        f"{gigabytes(room)} this process may still use (free memory, or what "
                        f"its container or job limit leaves): {advice}")


def check_latency_batch(batch: int, image_size: tuple[int, int], model_type: str = "",
                        framework: str = "") -> None:
    """``evaluate.py --latency_batch``: the tiled images (uint8), their float32 input and the
    forward pass of the network (machine/step_memory.py) must fit, checked before any work."""
    from pokedex_trainer.machine.step_memory import inference_bytes

    need = input_bytes(batch, image_size) // 4 + inference_bytes(model_type, framework, batch,
                                                                 image_size)
    refuse_unless_fits(need, f"--latency_batch {batch} ({image_size[0]}x{image_size[1]} "
                             "images, the model's forward pass included)",
                       "use a smaller --latency_batch")
