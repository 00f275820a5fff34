"""A ``TrainingBackend`` in plain Python, and a run built around it the way runs/lifecycle.py builds
a real one: the tests of ``core.loop`` and ``runs.checkpoints`` drive the real core with it.

The fake's weights are a dict of numbers: ``{"path": [1, 2, 5]}`` are weights trained at
epochs 1, 2 and 5 (1-based), in that order, so "the best weights were restored" and "phase 2
went on from the best" read as plain lists. ``fit_epoch`` and ``evaluate`` return the metrics
the test scripted for that epoch, and every call is recorded in ``calls``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from pokedex_trainer.config import TrainConfig
from pokedex_trainer.runs.checkpoints import STATE_FORMAT
from pokedex_trainer.core.context import RunContext
from pokedex_trainer.core.loop import RunState
from pokedex_trainer.core.phases import Phase, ResumePoint, plan_phases
from pokedex_trainer.data.scan import DatasetIndex
from pokedex_trainer.runs.history import HistoryWriter
from pokedex_trainer.runs.layout import RunLayout
from pokedex_trainer.runs.store import create_run_dir
from pokedex_trainer.runs.checked_files import check_history, read_state
from pokedex_trainer.runs.lifecycle import train_with_backend

STAMP = "20250101_120000"  # the run's timestamp (records.timestamp's format)
STATE_FILE = "fake_state.json"  # what save_state writes into resume/epoch_NNN/


def _layout(context: RunContext) -> RunLayout:
    """The file names of the fake run's directory."""
    return RunLayout.for_spec(context.run_dir, context.spec)


TEST_METRICS = {"loss": 0.5, "accuracy": 0.75, "top5_accuracy": 1.0}
NAN = math.nan


def scripted(val_accuracy, val_loss=None, loss=None) -> list[dict]:
    """One dict of metrics per epoch (0-based global epoch index into the lists).

    ``val_loss`` defaults to 1 - val_accuracy, ``loss`` to 1.0 (finite).
    """
    val_loss = val_loss or [1.0 - a if not math.isnan(a) else NAN for a in val_accuracy]
    loss = loss or [1.0] * len(val_accuracy)
    assert len(val_loss) == len(loss) == len(val_accuracy)
    return [{"loss": train_loss, "accuracy": 0.5, "top5_accuracy": 1.0,
             "val": {"loss": vl, "accuracy": va, "top5_accuracy": 1.0}}
            for train_loss, vl, va in zip(loss, val_loss, val_accuracy)]


class FakeBackend:
    """The ``TrainingBackend`` protocol, without a framework.

    Args:
        script: ``scripted(...)``: what each global epoch reports.
        main_process: False plays another rank of a multi-process run.
        ema: True keeps a "moving average": the raw weights marked ``{"average": 1}``.
        stop_in: ``(method name, 0-based epoch)``: that call raises KeyboardInterrupt (a
            Ctrl-C, or a kill, at that moment); ``("save_final", None)`` stops the final save.
    """

    device = "fake device"
    graceful_interrupt = False

    def __init__(self, script: list[dict], main_process: bool = True, ema: bool = False,
                 stop_in: tuple[str, int | None] | None = None):
        self.script = script
        self.main_process = main_process
        self.ema = {"path": [], "average": 1} if ema else None
        self.stop_in = stop_in
        self.weights: dict = {"path": []}
        self.lr: float | None = None
        self.epoch: int | None = None  # the last epoch fit_epoch trained
        self.calls: list[tuple] = []
        self.on_fit = None  # called with the epoch before it trains (a test's probe)

    def _stop(self, method: str, epoch: int | None) -> None:
        if self.stop_in == (method, epoch):
            raise KeyboardInterrupt

    # -- the protocol --------------------------------------------------------------------
    def start_phase(self, phase: Phase, learning_rate: float) -> None:
        self.calls.append(("start_phase", phase.name, phase.trainable, phase.n_layers,
                           learning_rate))
        self.lr = learning_rate

    def set_learning_rate(self, learning_rate: float) -> None:
        self.calls.append(("set_learning_rate", learning_rate))
        self.lr = learning_rate

    def swap_ema_weights(self) -> None:
        self.calls.append(("swap_ema_weights",))
        if self.ema is not None:
            self.weights, self.ema = self.ema, self.weights

    def learning_rate(self) -> float:
        return self.lr

    def fit_epoch(self, epoch: int, phase: Phase) -> dict:
        if self.on_fit is not None:
            self.on_fit(epoch)
        self.calls.append(("fit_epoch", epoch, phase.name, self.lr))
        self._stop("fit_epoch", epoch)
        self.epoch = epoch
        self.weights = {"path": self.weights["path"] + [epoch + 1]}
        if self.ema is not None:
            self.ema = {"path": list(self.weights["path"]), "average": 1}
        metrics = self.script[epoch]
        return {k: metrics[k] for k in ("loss", "accuracy", "top5_accuracy")}

    def evaluate(self, split: str) -> dict:
        self.calls.append(("evaluate", split, self.get_weights()))
        if split == "val":
            return dict(self.script[self.epoch]["val"])
        return dict(TEST_METRICS)

    def get_weights(self) -> dict:
        return json.loads(json.dumps(self.weights))  # a copy

    def set_weights(self, weights: dict) -> None:
        self.calls.append(("set_weights", weights))
        self.weights = json.loads(json.dumps(weights))

    def save_model(self, path: Path) -> None:
        self.calls.append(("save_model", Path(path).name, self.get_weights()))
        if "_final_" in Path(path).name:
            self._stop("save_final", None)
        Path(path).write_text(json.dumps(self.weights), encoding="utf-8")

    def read_model_weights(self, path: Path) -> dict:
        self.calls.append(("read_model_weights", Path(path).name))
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def save_state(self, folder: Path) -> None:
        self.calls.append(("save_state", folder.name))
        (folder / STATE_FILE).write_text(json.dumps({"weights": self.weights, "lr": self.lr}),
                                         encoding="utf-8")

    def load_state(self, folder: Path) -> dict | None:
        self.calls.append(("load_state", folder.name))
        saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        self.weights, self.lr = saved["weights"], saved["lr"]
        return None

    def log_epoch(self, epoch: int, logs: dict) -> None:
        self.calls.append(("log_epoch", epoch))
        self._stop("log_epoch", epoch)

    def close(self) -> None:
        self.calls.append(("close",))

    # -- what the tests read -------------------------------------------------------------
    def called(self, *names: str) -> list[tuple]:
        """The recorded calls to the methods ``names``, in order."""
        return [call for call in self.calls if call[0] in names]

    def trained_epochs(self) -> list[int]:
        """The 0-based epochs ``fit_epoch`` was called for."""
        return [call[1] for call in self.called("fit_epoch")]

    def rates(self) -> list[float]:
        """The learning rate each epoch trained at."""
        return [call[3] for call in self.called("fit_epoch")]

    def saved(self, name: str) -> list[list[int]]:
        """The weights' paths of every save_model call onto the file ``name``."""
        return [call[2]["path"] for call in self.called("save_model") if call[1] == name]


def make_context(tmp_path: Path, name: str = "run", **options):
    """A run's RunContext as ``training.create_run`` builds it: a resolved TrainConfig (tiny
    network, 32 px, ImageNet weights named so phase 1 trains the head), a split, a new run
    directory under tmp_path/runs. ``options`` are TrainConfig fields."""
    values = dict(data_path=str(tmp_path / "data"), model_type="tiny_torch", image_size=(32, 32),
                  batch_size=8, workers=0, histogram_freq=0, output_dir=str(tmp_path / "runs"),
                  log_dir=str(tmp_path / "tb"), run_name=name)
    values.update(options)
    config = TrainConfig(**values).resolved()
    samples = [(f"c{label}/{i}.jpg", label) for label in range(3) for i in range(4)]
    index = DatasetIndex(Path(config.data_path), ["c0", "c1", "c2"], samples)
    splits = {"train": samples[0::2], "val": samples[1::4], "test": samples[3::4]}
    run_dir = create_run_dir(Path(config.output_dir), name)
    return RunContext(config, config.spec, index, splits, run_dir,
                      Path(config.log_dir) / run_dir.name, STAMP)


def train(context, backend: FakeBackend, resume: bool = False, on_epoch=None,
          main_process: bool = True) -> tuple[RunState, dict]:
    """Train ``context`` with ``backend`` as runs/lifecycle.py does (``_train_and_record`` and
    ``train_with_backend``); ``resume`` continues from the run's resume/state.json, read and
    checked as ``open_resumed_run`` reads it. Returns the RunState and the test metrics."""
    layout, config = _layout(context), context.config
    point = None
    if resume:
        point = read_state(layout.resume_state, [p.epochs for p in plan_phases(config)],
                           STATE_FORMAT)
        check_history(layout.history, point["run_state"]["epochs_run"], layout.resume_state)
        point = ResumePoint.from_saved(point)
    state = RunState(HistoryWriter(layout.history), config.patience, resume_point=point,
                     on_epoch=on_epoch, main_process=main_process)
    metrics = train_with_backend(lambda _: backend, context, state)
    return state, metrics


def history(context) -> list[dict]:
    """history.csv as rows of strings."""
    with open(_layout(context).history, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def resume_point(context) -> dict:
    return json.loads(_layout(context).resume_state.read_text(encoding="utf-8"))
