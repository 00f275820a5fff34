"""Training over several processes and machines (torchrun), framework-free.

Global rank 0 (``RANK``) is the chief: it alone makes the run directory, logs, saves the
models, writes TensorBoard and the experiments row. ``LOCAL_RANK`` only picks the GPU of a
process on its own machine. The chief makes the split once (or reads it back from the run's
``split_manifest.json`` on ``--resume``) and sends it to every rank with the run's context, so
all ranks train on one split whatever their machine.

What the chief cannot send is the files themselves: every node must see the images at the
chief's ``--data_path``, the same files, and for ``--resume`` the run directory, whose
checkpoint every rank loads (so the output directory must be on storage that every node mounts
at the same path). ``describe_node`` says what one rank sees; ``group_problem`` turns the views
of all ranks into the one line that stops the whole group before training starts, instead of a
hang or a failure deep inside an epoch.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from pokedex_trainer.core.phases import ResumePoint
from pokedex_trainer.errors import UserError


def _whole(name: str, default: int, least: int) -> int:
    """A whole number torchrun puts in the environment; UserError for anything else."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isdigit() and int(text) >= least):
        raise UserError(f"{name}={text!r} is not a whole number of at least {least}: torchrun "
                        f"sets it; without torchrun unset {name}")
    return int(text)


def world() -> tuple[int, int]:
    """(global rank, world size) when started by torchrun, else (0, 1).

    Raises UserError when the environment names a group that torchrun did not start (a
    WORLD_SIZE left set in a shell, without MASTER_ADDR and MASTER_PORT): joining it would
    wait for processes that never come.
    """
    size = _whole("WORLD_SIZE", 1, 1)
    rank = _whole("RANK", 0, 0)
    if rank >= size:
        raise UserError(f"RANK={rank} is not below WORLD_SIZE={size}: start several processes "
                        "with torchrun, or unset RANK and WORLD_SIZE")
    if size > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise UserError(f"WORLD_SIZE={size} is set but {' and '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not: start several "
                            "processes with torchrun (docs/multi-gpu.md), or unset WORLD_SIZE "
                            "and RANK to train in one")
    return rank, size


def describe_group() -> str:
    """One line for the run's log: how many processes on how many machines."""
    rank, size = world()
    nodes = _whole("GROUP_WORLD_SIZE", 1, 1)
    per_node = _whole("LOCAL_WORLD_SIZE", size, 1)
    return (f"torchrun: {size} processes on {nodes} machine{'s' if nodes > 1 else ''} "
            f"({per_node} per machine); rank 0 on {socket.gethostname()} writes the run")


def split_files(splits: dict) -> list[str]:
    """The relative paths of every image of a run's split, sorted."""
    return sorted(path for items in splits.values() for path, _ in items)


def describe_node(root: Path, splits: dict, resume_point: ResumePoint | None,
                  run_dir: Path) -> dict:
    """What this rank sees of the files the run needs.

    Returns host, rank, missing (split images absent under ``root``: count and first),
    fingerprint (a digest of the relative path and size of every split image found) and
    missing_resume (the checkpoint folder of ``resume_point`` when this rank cannot see it).
    """
    rank, _ = world()
    digest, missing, first = hashlib.sha256(), 0, None
    for relative in split_files(splits):
        try:
            size = (Path(root) / relative).stat().st_size
        except OSError:
            missing += 1
            first = first or relative
            continue
        digest.update(f"{relative}\0{size}\n".encode("utf-8"))
    missing_resume = None
    if resume_point is not None:
        from pokedex_trainer.runs.store import RunStore

        state = RunStore(Path(run_dir)).resume_folder(resume_point.state_dir)
        if not state.exists():
            missing_resume = str(state.absolute())
    return {"host": socket.gethostname(), "rank": rank, "root": str(root),
            "missing": (missing, first), "fingerprint": digest.hexdigest(),
            "missing_resume": missing_resume}


def group_problem(views: list[dict]) -> str | None:
    """The first thing a rank cannot see, as one line for every rank to stop with; None when
    every rank sees what the chief (``views[0]``) sees."""
    chief = views[0]
    for view in views:
        where = f"rank {view['rank']} on {view['host']}"
        count, first = view["missing"]
        if count:
            return (f"{where} cannot read {count} images of the split under '{view['root']}' "
                    f"(first: {first}): every machine needs the dataset at the same path "
                    "(shared storage or an identical copy)")
        if view["missing_resume"]:
            return (f"{where} cannot see the checkpoint '{view['missing_resume']}' it must "
                    "load to resume: put --output_dir on storage that every machine mounts at "
                    "the same path")
        if view["fingerprint"] != chief["fingerprint"]:
            return (f"{where} sees other files under '{view['root']}' than rank 0 on "
                    f"{chief['host']} (names or sizes differ): every machine needs the same "
                    "copy of the dataset")
    return None


def check_keras_cluster() -> None:
    """A Keras network trains on one machine only: refuse a multi-worker TensorFlow cluster.

    Keras 3 cannot run ``model.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``:
    with two workers (TF_CONFIG) the first training step fails with "Attempt to convert a value
    (PerReplica ...) to a Tensor" (keras-team/keras#20585, tensorflow/tensorflow#72388; seen
    here with Keras 3.15.1 and TensorFlow 2.21.0). Ignoring TF_CONFIG would silently train N
    independent runs instead.
    """
    if os.environ.get("TF_CONFIG") and _cluster_tasks(os.environ["TF_CONFIG"]) != 1:
        raise UserError("TF_CONFIG is set, but the Keras networks cannot train across machines "
                        "(Keras 3 fit fails under MultiWorkerMirroredStrategy, "
                        "keras-team/keras#20585): unset TF_CONFIG to train on one machine with "
                        "all its GPUs, or use --framework pytorch with torchrun --nnodes N")


def _cluster_tasks(tf_config: str) -> int | None:
    """How many tasks a TF_CONFIG's cluster names (one: a single-machine job, as some managed
    platforms set it); None when it is not a readable TF_CONFIG."""
    import json

    try:
        cluster = json.loads(tf_config).get("cluster") or {}
        return sum(len(tasks) for tasks in cluster.values())
    except (ValueError, AttributeError, TypeError):
        return None
