"""A model being judged: its predictions on labelled images and its calibration temperature.

The temperature is fitted on the run's validation split, never on the test split, and saved in
the run's calibration.json (or read back from it, or from an export's sidecar).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.calibration import (
    apply_temperature,
    checked_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from pokedex_trainer.evaluation.metrics import compute_metrics
from pokedex_trainer.evaluation.predict import Predictor, load_predictor
from pokedex_trainer.runs.finished import LabelledImages, run_split
from pokedex_trainer.runs.layout import CLASS_NAMES
from pokedex_trainer.runs.store import RunStore, read_calibration_file, write_calibration_file

logger = logging.getLogger(__name__)


@dataclass
class Member:
    """One model with its predictions on the evaluated images."""

    name: str
    predictor: Predictor
    run_dir: Path | None
    probabilities: np.ndarray | None = None
    temperature: float = 1.0
    calibration: dict = field(default_factory=dict)
    calibration_file: Path | None = None  # --calibration; default <run>/calibration.json
    unknown_recall: float = 0.95  # --unknown_recall: known photos the "unknown" rule keeps

    @property
    def calibrated(self) -> np.ndarray:
        return apply_temperature(self.probabilities, self.temperature)

    @property
    def calibration_path(self) -> Path | None:
        """Where this member's temperature is saved and read."""
        if self.calibration_file is not None:
            return Path(self.calibration_file)
        return RunStore(self.run_dir).calibration_path if self.run_dir else None


def predict_images(predictor: Predictor, images: LabelledImages, batch_size: int = 32,
                   label: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of every readable image, with a progress bar."""
    probabilities, labels = [], []
    for batch, batch_labels in images.load(predictor.info.image_size, batch_size,
                                           progress=label):
        probabilities.append(predictor.predict(batch))
        labels.append(batch_labels)
    if not probabilities:
        raise UserError(f"no readable image in {images.description}")
    return np.concatenate(probabilities), np.concatenate(labels)


def calibrate(member: Member) -> None:
    """Fit the temperature on the member's validation split and save it in its run directory.

    Without a validation split (a loose model file) the saved temperature is used if any (see
    ``saved_calibration``), else 1 (uncalibrated), and the report says so.
    """
    run_dir = member.run_dir
    if _file_rule(member) is not None:  # an export: its own temperature and rule, as an app
        member.calibration = saved_calibration(member)
        member.temperature = member.calibration["temperature"]
        return
    val = run_split(run_dir, "val") if run_dir else None
    if val is None or not val.samples:
        saved = saved_calibration(member)
        member.temperature = saved["temperature"] if saved else 1.0
        member.calibration = {"temperature": member.temperature,
                              "fitted_on": saved["fitted_on"] if saved else
                              "nothing: no validation split, probabilities are uncalibrated"}
        return
    from pokedex_trainer.evaluation.known_score import fitted_rule, model_outputs

    read_calibration_file(member.calibration_path)  # a damaged one is refused before any work
    probabilities, labels, logits, features = model_outputs(member.predictor, val,
                                                            "validation split")
    temperature = fit_temperature(probabilities, labels)
    calibrated = apply_temperature(probabilities, temperature)
    member.temperature = temperature
    rule = _file_rule(member)
    if rule is None:
        rule = fitted_rule(member.predictor, run_dir, calibrated, logits, features,
                              member.unknown_recall, f"validation split ({len(labels)} images)",
                              temperature, keep=keeps_run_files(member))
    member.calibration = {
        "temperature": temperature, "fitted_on": f"validation split ({len(labels)} images)",
        "unknown": rule,
        "val_ece_before": expected_calibration_error(probabilities, labels),
        "val_ece_after": expected_calibration_error(calibrated, labels),
        "val_loss_before": negative_log_likelihood(probabilities, labels),
        "val_loss_after": negative_log_likelihood(calibrated, labels),
    }
    _save_calibration(run_dir, member.predictor.path, member.calibration,
                      member.calibration_path)


def _file_rule(member: Member) -> dict | None:
    """An exported file's own "unknown" rule (its sidecar's): the file computes that score
    itself, so no other rule may be applied to it; None for a run's model or an older export."""
    sidecar = getattr(member.predictor, "sidecar", None)
    if not sidecar or sidecar.get("unknown") is None:
        return None
    from pokedex_trainer.evaluation.unknown import checked_rule

    return checked_rule(sidecar["unknown"], f"{member.predictor.path}.json")


def _warn_if_stale(member: Member, own: dict, temperature: float) -> None:
    """An export whose rule or temperature differ from what its run's calibration.json now
    holds for its source model: it answers as when it was exported; say so."""
    path = member.calibration_path
    source = member.predictor.sidecar.get("source_model")
    if path is None or not path.is_file() or not source:
        return
    try:
        data = read_calibration_file(path)
    except UserError:
        return
    entry = data.get("models", {}).get(source)
    if not isinstance(entry, dict) or not isinstance(entry.get("unknown"), dict):
        return
    now = entry["unknown"]
    if now.get("score") != own.get("score") or \
            abs(float(now.get("threshold", 0)) - float(own["threshold"])) > 1e-9 or \
            abs(float(entry.get("temperature", 1.0)) - temperature) > 1e-9:
        logger.warning("%s was exported before the run's latest evaluation: it answers with "
                       "its own rule (%s), the run's model with the newer one (%s); export "
                       "again for the same answers", member.predictor.path.name,
                       own.get("score"), now.get("score"))


def keeps_run_files(member: Member) -> bool:
    """Whether evaluate.py writes into the member's run folder (its calibration.json is the
    run's own, not a --calibration file elsewhere)."""
    return member.run_dir is not None and member.calibration_path is not None and \
        Path(member.calibration_path).resolve() == \
        RunStore(member.run_dir).calibration_path.resolve()


def _save_calibration(run_dir: Path, model_path: Path, details: dict, path: Path) -> None:
    """calibration.json (``path``): per model file, and at the top the run's best model's (used
    by export sidecars and by default)."""
    data = read_calibration_file(path) or {}  # a damaged file is refused, not overwritten
    data.setdefault("models", {})[model_path.name] = details
    if RunStore(run_dir).is_best_model(model_path) or "temperature" not in data:
        data.update({k: v for k, v in details.items()})
        data["model"] = model_path.name
    write_calibration_file(path, data)


def saved_calibration(member: Member) -> dict | None:
    """The temperature saved for a model: its run's calibration.json (this file's entry, else
    the run's), else the one an export recorded in its sidecar; None when there is none."""
    own = _file_rule(member)
    if own is not None:  # an export applies the rule it computes, at its own temperature
        temperature = float(member.predictor.sidecar.get("temperature") or 1.0)
        checked_temperature(temperature, f"{member.predictor.path}.json")
        _warn_if_stale(member, own, temperature)
        return {"temperature": temperature, "unknown": own,
                "fitted_on": "the export's sidecar: a file applies its own rule"}
    path = member.calibration_path
    if path is not None and path.is_file():
        data = read_calibration_file(path)
        entry = data.get("models", {}).get(member.predictor.path.name)
        if entry is None and "temperature" in data:
            entry = {"temperature": data["temperature"], "unknown": data.get("unknown"),
                     "fitted_on": f"{data.get('fitted_on', 'validation split')} of "
                                  f"{data.get('model', 'the run')}"}
        if entry is not None:
            checked_temperature(entry.get("temperature"), str(path))
            from pokedex_trainer.evaluation.unknown import checked_rule

            checked_rule(entry.get("unknown"), str(path))
            return entry
    sidecar = getattr(member.predictor, "sidecar", {})
    if sidecar.get("temperature") or sidecar.get("unknown"):
        from pokedex_trainer.evaluation.unknown import checked_rule

        return {"temperature": float(sidecar.get("temperature") or 1.0),
                "unknown": checked_rule(sidecar.get("unknown"), f"{member.predictor.path}.json"),
                "fitted_on": f"the validation split of {sidecar.get('source_model', 'its source')}"
                             " (from the export's sidecar)"}
    return None


def load_for_run(model_path: Path, run: Path | None) -> Predictor:
    """The predictor of ``model_path``, checked against its run's class list."""
    names = None
    if run is not None and RunStore(run).has_class_names():
        names = RunStore(run).class_names()
    predictor = load_predictor(model_path, names)
    if names is not None and list(predictor.info.class_names) != names:
        raise UserError(f"{run / CLASS_NAMES}: its {len(names)} classes are not the "
                        f"{len(predictor.info.class_names)} of '{model_path.name}'; the model is "
                        "not this run's (pass --model with the run's own file)")
    return predictor


def member_metrics(member: Member, labels: np.ndarray) -> dict:
    names = member.predictor.info.class_names
    metrics = compute_metrics(labels, member.probabilities, names)
    calibrated = member.calibrated
    metrics["calibration"] = dict(member.calibration)
    metrics["calibration"].update(
        test_ece_before=metrics["ece"],
        test_ece_after=expected_calibration_error(calibrated, labels),
        test_loss_after=negative_log_likelihood(calibrated, labels))
    return metrics
