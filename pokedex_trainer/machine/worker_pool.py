"""Worker processes whose death or silence the caller notices at once.

``multiprocessing.Pool`` replaces a worker that dies and forgets the task it held: the caller
then waits for that result forever (a worker killed by the out-of-memory killer, or workers
that cannot import the main script, left a run silent for good). Here each worker has its own
pipe; the caller waits on the pipes and on the processes' sentinels together, so an exit is an
event it sees at once, and a worker alive but silent for ``timeout`` seconds ends the wait too.
Processes start when the pool is made, so a machine that refuses them says so there.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass, field

from pokedex_trainer.errors import RunFailed

logger = logging.getLogger(__name__)

TIMEOUT_VARIABLE = "POKEDEX_WORKER_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds: a batch of huge images on a slow disk still fits
_READY = "ready"


class WorkersFailed(RunFailed):
    """A worker process died or went silent; the message names the cause and the fix."""


class WorkersUnavailable(Exception):
    """Not one worker process could start (process limit, unimportable main script...)."""


def worker_timeout() -> float:
    """Seconds to wait for a worker's answer (``POKEDEX_WORKER_TIMEOUT``, default 300)."""
    from pokedex_trainer.user_io.env_values import env_seconds

    return env_seconds(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT)


def _map_chunk(item: tuple) -> list:
    """In a worker: ``function`` over a chunk of tasks (``ordered_map``)."""
    function, tasks = item
    return [function(task) for task in tasks]


def _serve(conn, payload: bytes) -> None:
    """A worker's life: initialize, say ready, then answer tasks until told to stop."""
    # Ctrl-C, timeout, kill -- -PGID and scancel signal the whole process group: the main
    # process stops the run cleanly and then its workers; a worker that died of the signal
    # first would turn that clean stop into a crash (a broken pipe inside the framework).
    # A worker still ends with its parent (exit_with_parent) and when the pool closes.
    import signal

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    # One thread per library: the workers are the parallelism (and threads count against the
    # process limit). Set before unpickling the payload imports numpy or OpenCV.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    function, initializer, initargs = pickle.loads(payload)
    if initializer is not None:
        initializer(*initargs)
    try:
        conn.send(_READY)
        while True:
            message = conn.recv()
            if message is None:
                return
            task_id, task = message
            try:
                reply = (task_id, True, function(task))
            except Exception as exc:
                reply = (task_id, False, exc)
            try:
                conn.send(reply)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                value = reply[2]
                cause = f"{type(value).__name__}: {value}" if not reply[1] else str(exc)
                conn.send((task_id, False, RuntimeError(cause)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the trainer is gone


@dataclass(eq=False)
class _Worker:
    process: object
    conn: object
    outstanding: set = field(default_factory=set)
    ready: bool = False


class WorkerPool:
    """``workers`` processes that run ``function(task)``; answers are fetched by task id.

    Args:
        workers: processes to start; fewer when the machine refuses some (with a warning).
        function: a module-level function of one argument (picklable by reference).
        initializer, initargs: run once in each worker before its first task.
        start_method: ``spawn`` by default (safe after a framework started its threads).
        what: the workers' job, for messages ("data-loading").
        fix: what the user can do when a worker dies, for the message.
        timeout: seconds without any answer before a waiting caller gives up (default:
            ``worker_timeout()``).

    Raises:
        WorkersUnavailable: not one worker started.
    """

    def __init__(self, workers: int, function, initializer=None, initargs: tuple = (),
                 start_method: str = "spawn", what: str = "worker", fix: str = "",
                 timeout: float | None = None):
        import multiprocessing

        self.what, self.fix = what, fix
        self.timeout = worker_timeout() if timeout is None else timeout
        self._workers: list[_Worker] = []
        self._results: dict[int, tuple[bool, object]] = {}
        self._next_id = 0
        self._failure: WorkersFailed | None = None
        context = multiprocessing.get_context(start_method)
        payload = pickle.dumps((function, initializer, initargs))
        try:
            for _ in range(workers):
                parent, child = context.Pipe()
                process = context.Process(target=_serve, args=(child, payload), daemon=True)
                try:
                    process.start()
                except OSError as exc:  # EAGAIN under a process limit, ENOMEM...
                    parent.close()
                    if not self._workers:
                        raise WorkersUnavailable(f"{what} worker processes could not start "
                                                 f"({exc.strerror or exc})") from exc
                    logger.warning("only %d of %d %s worker processes could start (%s)",
                                   len(self._workers), workers, what, exc.strerror or exc)
                    break
                finally:
                    child.close()
                self._workers.append(_Worker(process, parent))
            self._await_ready()
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        """Workers running."""
        return len(self._workers)

    def _await_ready(self) -> None:
        """Wait until each worker initialized; drop (with a warning) those that died."""
        dead = []
        try:
            while not all(worker.ready for worker in self._workers):
                self._receive()
        except WorkersFailed as exc:
            if self._failure is None or not self._failure.at_start:
                raise
            dead = [w for w in self._workers if w.process.exitcode is not None]
            self._failure = None
            self._workers = [w for w in self._workers if w not in dead]
            if not self._workers:
                raise WorkersUnavailable(str(exc)) from None
            logger.warning("%s; going on with %d", exc, len(self._workers))
            self._await_ready()

    def submit(self, task) -> int:
        """Send ``task`` to the least busy worker; returns its id for ``result``."""
        if self._failure is not None:
            raise self._failure
        worker = min(self._workers, key=lambda w: len(w.outstanding))
        task_id, self._next_id = self._next_id, self._next_id + 1
        try:
            worker.conn.send((task_id, task))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._fail(worker)
        worker.outstanding.add(task_id)
        return task_id

    def result(self, task_id: int):
        """The answer of ``task_id`` (its exception re-raised); raises WorkersFailed when a
        worker dies or none answers for ``timeout`` seconds."""
        while task_id not in self._results:
            self._receive()
        ok, value = self._results.pop(task_id)
        if not ok:
            raise value
        return value

    def discard(self, task_ids) -> None:
        """Wait for answers nobody will read (their buffers are still being written)."""
        for task_id in task_ids:
            try:
                self.result(task_id)
            except WorkersFailed:
                return
            except Exception:
                pass

    def _receive(self) -> None:
        """Wait for the next message or exit of any worker."""
        from multiprocessing.connection import wait

        if self._failure is not None:
            raise self._failure
        pipes = {worker.conn: worker for worker in self._workers}
        exits = {worker.process.sentinel: worker for worker in self._workers}
        ready = wait([*pipes, *exits], self.timeout)
        if not ready:
            self._failure = WorkersFailed(
                f"no answer from the {self.what} worker processes for {self.timeout:g} s while "
                f"they still run (a file that cannot be read, a stalled network drive?): set "
                f"{TIMEOUT_VARIABLE} to wait longer, or {self.fix or 'use fewer workers'}")
            self._failure.at_start = False
            raise self._failure
        for handle in sorted(ready, key=lambda h: h not in pipes):  # answers before exits
            worker = pipes.get(handle) or exits[handle]
            if handle in pipes:
                try:
                    message = handle.recv()
                except (EOFError, OSError):
                    self._fail(worker)
                if message == _READY:
                    worker.ready = True
                else:
                    task_id, ok, value = message
                    worker.outstanding.discard(task_id)
                    self._results[task_id] = (ok, value)
            else:
                self._fail(worker)

    def _fail(self, worker: _Worker) -> None:
        import signal

        worker.process.join(5)
        code = worker.process.exitcode
        fix = self.fix or "run it again with fewer workers"
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            cause = f"was killed by {name}"
            if -code == getattr(signal, "SIGKILL", 9):
                cause += " (the out-of-memory killer sends it when memory runs out)"
            else:  # SIGTERM, SIGHUP...: something outside stopped it, not a lack of memory
                fix = "something outside the trainer stopped it; run it again"
        else:
            cause = f"exited with code {code} (its error is printed above)"
        if not worker.ready:
            self._failure = WorkersFailed(f"{self.what} worker processes could not start: one "
                                          f"{cause}")
        else:
            self._failure = WorkersFailed(f"a {self.what} worker process {cause}: {fix}")
        self._failure.at_start = not worker.ready
        raise self._failure

    def close(self) -> None:
        """Stop every worker now (work in progress is dropped). SIGKILL, since workers leave
        SIGTERM to the main process (see _serve); the pool owns nothing they could leave half
        done (the shared batch buffers are the main process's)."""
        for worker in self._workers:
            if worker.process.exitcode is None:
                worker.process.kill()
        deadline = time.monotonic() + 5
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join(5)
            worker.conn.close()
        self._workers = []


def ordered_map(function, tasks: list, workers: int, description: str, what: str = "worker",
                fix: str = "") -> list:
    """``[function(task) for task in tasks]`` over ``workers`` processes (clamped to what the
    machine allows; in this process when none may start), with a progress bar. A dead or
    silent worker raises WorkersFailed instead of leaving the caller waiting."""
    from collections import deque
    from itertools import islice

    from tqdm import tqdm

    from pokedex_trainer.machine.processes import exit_with_parent
    from pokedex_trainer.machine.worker_limits import usable_workers, workers_refused

    pool = None
    workers = usable_workers(workers) if len(tasks) >= 8 and workers > 1 else 0
    if workers > 1:
        try:
            pool = WorkerPool(workers, _map_chunk, exit_with_parent, (os.getpid(),), what=what,
                              fix=fix)
        except WorkersUnavailable as exc:
            workers_refused(f"{exc}; working in the main process instead (slower)")
    if pool is None:
        return [function(task) for task in tqdm(tasks, desc=description, unit="img")]
    # Chunks in order, a few per worker in flight.
    chunk = max(1, min(64, len(tasks) // (pool.size * 8)))
    chunks = iter([(function, tasks[i:i + chunk]) for i in range(0, len(tasks), chunk)])
    results: list = []
    try:
        pending = deque(pool.submit(item) for item in islice(chunks, pool.size * 2))
        with tqdm(total=len(tasks), desc=description, unit="img") as bar:
            while pending:
                done = pool.result(pending.popleft())
                results.extend(done)
                bar.update(len(done))
                pending.extend(pool.submit(item) for item in islice(chunks, 1))
    finally:
        pool.close()
    return results
