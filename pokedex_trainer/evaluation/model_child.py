"""ONNX and TFLite files are opened and run in a child process that is killed at a deadline.

A model file comes from anywhere. Read statically (bounded_runs.py, graph_work.py) most files
that would never return are refused in one line, but no reading of a graph sees everything: a
shape inference that allocates without end, an If branch that hides an operator, constant
folding while the session is made, a runtime whose operators ignore every signal. So the file
is checked, opened and run in a process of its own:

* every step (checking and opening, then each call) has a deadline,
  ``POKEDEX_MODEL_CALL_LIMIT`` seconds (600 by default; 60 s more to start the process and
  import the runtime); past it the process is killed (SIGKILL:
  a runtime busy in one operator hears nothing else) and the command ends with one line;
* on POSIX its address space is capped (the memory this machine has free when it starts, at
  least 2 GiB), so a file that asks for more ends as an error in the child, not as the
  out-of-memory killer taking the user's session; if it dies anyway the parent says so;
* it ignores Ctrl-C and SIGTERM (the parent answers them and kills it), writes nothing to the
  terminal (the runtimes' own log lines stay out of the user's way), and ends with its parent.

Latency is timed inside the child, so the pipe between the two never counts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError, reason_line

logger = logging.getLogger(__name__)

MIN_ADDRESS_SPACE = 2 * 1024 ** 3
START_ALLOWANCE_S = 60.0  # starting the process and importing the runtime, on a busy machine


def _silence_child() -> None:
    import signal

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)


def _cap_memory(limit: int | None) -> None:
    if limit is None:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # Windows, or a lower hard limit already
        pass


class _Onnx:
    def __init__(self, path: Path, input_shape, threads: int):
        import onnxruntime as ort

        from pokedex_trainer.evaluation.bounded_runs import check_onnx_graph

        check_onnx_graph(path, input_shape)  # here: its own blow-ups are bounded too
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.details = {"providers": self.session.get_providers()}

    def run(self, x):
        out = self.session.run(None, {self.input_name: x})
        return out[0] if len(out) == 1 else out


class _TFLite:
    def __init__(self, path: Path, input_shape, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        from pokedex_trainer.evaluation.bounded_runs import check_tflite_ops

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        check_tflite_ops(path, self.interpreter)  # before any invoke
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self.batch, self.fixed = None, False
        self.details = {"providers": ["LiteRT"]}

    def run(self, x):
        from pokedex_trainer.evaluation.predict import _dequantize, _quantize

        interpreter = self.interpreter
        if self.batch != len(x) and not (self.fixed and self.batch == 1):
            try:
                interpreter.resize_tensor_input(self.input["index"], list(x.shape))
                interpreter.allocate_tensors()
                self.batch = len(x)
            except RuntimeError:  # a graph made for one image at a time (a static reshape)
                interpreter.resize_tensor_input(self.input["index"], [1, *x.shape[1:]])
                interpreter.allocate_tensors()
                self.batch, self.fixed = 1, True
        if self.fixed and len(x) != 1:
            parts = [self.run(x[i:i + 1]) for i in range(len(x))]
            if isinstance(parts[0], list):
                return [np.concatenate(column) for column in zip(*parts)]
            return np.concatenate(parts)
        interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
        interpreter.invoke()
        out = [_dequantize(interpreter.get_tensor(detail["index"]), detail)
               for detail in self.outputs]
        return out[0] if len(out) == 1 else out


_RUNTIMES = {"onnx": _Onnx, "tflite": _TFLite}


def _end_with(parent_pid: int) -> None:
    """End this process soon after the process that asked for it is gone (kill -9 included);
    its parent may be a fork server, so the asker is watched by its pid."""
    import threading

    def watch() -> None:
        import psutil

        while True:
            time.sleep(1.0)
            if not psutil.pid_exists(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _serve(conn, path: str, kind: str, input_shape, threads: int, memory: int | None,
           parent_pid: int, environment: dict) -> None:
    """The child: check and open the file, say so, then answer calls until told to stop."""
    _silence_child()
    os.environ.update(environment)  # the asker's settings now (a fork server has older ones)
    _end_with(parent_pid)
    _cap_memory(memory)
    try:
        model = _RUNTIMES[kind](Path(path), input_shape, threads)
        conn.send(("ok", model.details))
    except BaseException as exc:  # noqa: BLE001 - everything goes back as one line
        conn.send(_reason(exc, path))
        return
    while True:
        try:
            request, payload = conn.recv()
        except EOFError:
            return
        if request == "stop":
            return
        try:
            if request == "run":
                out = model.run(payload)
                conn.send(("ok", [np.asarray(o) for o in out] if isinstance(out, list)
                           else np.asarray(out)))
            elif request == "memory":
                from pokedex_trainer.machine.memory import peak_resident_mb

                conn.send(("ok", peak_resident_mb()))
            else:  # "time": (x, warm-up calls, timed calls) -> milliseconds of each call
                from pokedex_trainer.evaluation.latency import call_times

                x, warmup, runs = payload
                conn.send(("ok", call_times(lambda: model.run(x), warmup, runs)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(_reason(exc, path))


def _reason(exc: BaseException, path: str) -> tuple[str, str]:
    """("error", the user's line) for a refusal; ("failed", the runtime's first line) for a
    runtime's own exception, which the parent raises as such for its caller to word."""
    if isinstance(exc, UserError):
        return "error", str(exc)
    if isinstance(exc, MemoryError) or "bad_alloc" in str(exc):
        return "error", f"'{path}' asked for more memory than this machine has free; it is " \
                        "not run"
    return "failed", reason_line(exc)


def address_space_limit() -> int:
    """What the child may map: the memory free now (cgroup-aware), at least 2 GiB."""
    from pokedex_trainer.machine.memory import memory_available

    return max(MIN_ADDRESS_SPACE, int(memory_available()))


def _context():
    """forkserver where there is one (Linux, macOS): each child forks from a clean server
    that already imported the runtimes, in milliseconds; spawn elsewhere (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pokedex_trainer.evaluation.model_child", "onnx",
                                    "onnxruntime", "ai_edge_litert.interpreter"])
    return context


class ModelChild:
    """A model file checked, opened and run in a child process (see the module's notes).

    Args:
        path: the .onnx or .tflite file.
        kind: ``"onnx"`` or ``"tflite"``.
        input_shape: one image as the tool feeds it (for the static size check).
        threads: the runtime's threads.
    """

    def __init__(self, path: Path, kind: str, input_shape, threads: int):
        from pokedex_trainer.evaluation.bounded_runs import CALL_LIMIT_ENV, call_limit_s

        self.path, self.limit, self.env = Path(path), call_limit_s(), CALL_LIMIT_ENV
        context = _context()
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, daemon=True, name="model-runtime",
            args=(child, str(path), kind, input_shape, threads,
                  address_space_limit() if os.name == "posix" else None, os.getpid(),
                  {k: v for k, v in os.environ.items() if k.startswith("POKEDEX_")}))
        self.process.start()
        child.close()
        self.details = self._answer("was not checked and opened",
                                    self.limit + START_ALLOWANCE_S)

    def run(self, x: np.ndarray) -> np.ndarray:
        self._conn.send(("run", x))
        return self._answer("did not answer")

    def time_calls(self, x: np.ndarray, warmup: int, runs: int) -> list[float]:
        """Milliseconds of each of ``runs`` calls after ``warmup``, timed in the child."""
        self._conn.send(("time", (x, warmup, runs)))
        return self._answer("did not answer")

    def peak_memory_mb(self) -> float:
        """The child's own peak resident memory in MB (the benchmarks' memory column)."""
        self._conn.send(("memory", None))
        return self._answer("did not answer")

    def _answer(self, what: str, limit: float | None = None):
        from multiprocessing.connection import wait

        limit = self.limit if limit is None else limit
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close(now=True)
                raise UserError(f"'{self.path}' {what} within {limit:g} s and was "
                                f"stopped ({self.env} sets the limit)")
            ready = wait([self._conn, self.process.sentinel], timeout=min(remaining, 1.0))
            if self._conn in ready:
                try:
                    status, value = self._conn.recv()
                except (EOFError, OSError):
                    status, value = "died", None
                if status == "ok":
                    return value
                if status == "failed":
                    raise RuntimeError(value)
                self.close()
                if status == "error":
                    raise UserError(value)
            if self._conn in ready or self.process.sentinel in ready:
                self.close(now=True)
                code = self.process.exitcode
                raise UserError(f"'{self.path}' ended the process that ran it (exit code "
                                f"{code}{': out of memory?' if code in (-9, 137) else ''}); "
                                "it is not run")

    def close(self, now: bool = False) -> None:
        """Stop the child (``now``: kill it, it may be busy in an operator)."""
        if self.process.is_alive() and not now:
            try:
                self._conn.send(("stop", None))
            except (OSError, ValueError):
                pass
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self._conn.close()

    def __del__(self):
        try:
            if self.process.is_alive():
                self.process.kill()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
