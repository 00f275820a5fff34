"""The shipped "unknown" rule applied to any model file: the same score, the same verdict.

A run's own model (``.keras``, ``.pth``) gives its logits and penultimate features, from which
evaluation/unknown.py computes every score; an exported file computes the rule's score itself
(its ``known_score`` output, exporters put it there) or, for max softmax, gives the
probabilities it is read from. The knn score needs a bank of training features: the normalized
features of up to KNN_BANK training photos of the run (a seeded choice), kept in the run folder
(``unknown_bank/<model file>.npy``) so that evaluate.py, export.py and ``--predict`` use the
very same bank, and recomputed when the model file changed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation import unknown as scoring

logger = logging.getLogger(__name__)

BANK_FOLDER = "unknown_bank"
BANK_SEED = 3


def model_outputs(predictor, images, label: str):
    """(probabilities, labels, logits or None, features or None) of every readable image."""
    probabilities, labels, logits, features = [], [], [], []
    for batch, batch_labels in images.load(predictor.info.image_size, 32, progress=label):
        probabilities.append(predictor.predict(batch))
        labels.append(batch_labels)
        inner = predictor.logits_and_features(batch)
        if inner is not None:
            logits.append(inner[0])
            features.append(inner[1])
    if not probabilities:
        raise UserError(f"no readable photo in {images.description}")
    joined = np.concatenate(probabilities)
    if logits and sum(len(x) for x in logits) == len(joined):
        return joined, np.concatenate(labels), np.concatenate(logits), np.concatenate(features)
    return joined, np.concatenate(labels), None, None


def _stamp(path: Path) -> dict:
    stat = Path(path).stat()
    return {"model": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def feature_bank(predictor, run: Path | None, keep: bool = True, kind: str = "training"
                 ) -> np.ndarray | None:
    """Normalized features of up to KNN_BANK training photos of ``run`` (float32), or None
    where there is no run, no training split, or no features (a network of another shape).
    ``kind`` "unknown": of the ``--unknown_dir`` photos the run trained on (knn_contrast), None
    for a run without them. ``keep``: save a bank computed here in the run folder (export.py
    only reads the run)."""
    from pokedex_trainer.user_io.atomic import atomic_write_bytes, atomic_write_json

    if run is None or predictor.runtime not in ("keras", "pytorch"):
        return None
    probe = predictor.logits_and_features(np.zeros((1, *predictor.info.image_size, 3),
                                                   np.uint8))
    if probe is None:
        return None  # a network of another shape: no features
    folder = Path(run) / BANK_FOLDER
    name = predictor.path.name + ("" if kind == "training" else ".unknown")
    target, meta = folder / f"{name}.npy", folder / f"{name}.json"
    stamp = _stamp(predictor.path)
    try:
        recorded = json.loads(meta.read_text("utf-8"))
    except (OSError, ValueError):
        recorded = None  # absent or damaged: computed again below
    if isinstance(recorded, dict) and {k: recorded.get(k) for k in stamp} == stamp:
        try:
            bank = np.load(target, allow_pickle=False)
        except Exception:  # noqa: BLE001 - truncated, a pickle, a folder: never used
            bank = None
        if bank is not None and _sound(bank, probe[1].shape[1]) and \
                recorded.get("sha256") == _digest(bank):
            return bank
        logger.warning("%s is damaged or was edited: the feature bank is computed again",
                       target)
    chosen = _bank_photos(run, kind)
    if chosen is None:
        return None
    features = model_outputs(predictor, chosen, f"{kind} photos (feature bank)")[3]
    if features is None:
        return None
    # no two equal rows: the exported files find the k-th highest similarity by removing the
    # highest k-1 times, all equal ones at once (exporters/torch_formats.py KnownScore)
    bank = np.unique(scoring.normalized(features).astype(np.float32), axis=0)
    if not keep:
        return bank
    import io

    buffer = io.BytesIO()
    np.save(buffer, bank, allow_pickle=False)
    try:
        folder.mkdir(exist_ok=True)
        atomic_write_bytes(target, buffer.getvalue())
        atomic_write_json(meta, {**stamp, "sha256": _digest(bank)})
    except OSError as exc:  # a cache: used now, computed again next time
        logger.warning("could not keep the feature bank in %s (%s): it is computed again "
                       "next time", folder, exc.strerror or exc)
    return bank


def _bank_photos(run: Path, kind: str):
    """The photos of a bank (LabelledImages, a seeded choice of at most KNN_BANK), or None."""
    from pokedex_trainer.data.unknown_photos import held_out_files
    from pokedex_trainer.runs.finished import LabelledImages, run_split

    if kind == "unknown":
        files = held_out_files(run, "trained")
        if not files:
            return None
        images = LabelledImages(Path("/"), [], [(str(f), -1) for f in files],
                                f"{len(files)} photos of --unknown_dir the run trained on")
    else:
        try:
            images = run_split(run, "train")
        except UserError:
            return None
        if not images.samples:
            return None
    return images.subset(scoring.KNN_BANK, seed=BANK_SEED)


def _digest(bank: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(bank).tobytes()).hexdigest()


def held_out_unknown(run: Path | None):
    """The unknown photos a run held out of ``--unknown_dir`` (LabelledImages), or None."""
    from pokedex_trainer.data.unknown_photos import held_out_files
    from pokedex_trainer.runs.finished import LabelledImages

    files = held_out_files(run) if run is not None else []
    if not files:
        return None
    return LabelledImages(Path("/"), [], [(str(f), -1) for f in files],
                          f"{len(files)} held-out photos of --unknown_dir")


def _sound(bank, width: int) -> bool:
    """A bank as feature_bank writes it: float32 rows of the model's feature width, each of
    length 1, no two equal."""
    if not (isinstance(bank, np.ndarray) and bank.dtype == np.float32 and bank.ndim == 2
            and len(bank) and bank.shape[1] == width and np.isfinite(bank).all()):
        return False
    norms = np.linalg.norm(bank.astype(np.float64), axis=1)
    return bool(np.abs(norms - 1.0).max() < 1e-3) and len(np.unique(bank, axis=0)) == len(bank)


def fitted_rule(predictor, run: Path | None, calibrated: np.ndarray, logits, features,
                recall: float, fitted_on: str, temperature: float = 1.0, keep: bool = True
                ) -> dict:
    """The rule that ships, fitted on validation outputs: the score with the best AUROC against the run's held-out unknown photos where it has some
    (``--unknown_dir``), else choose_score's default; the threshold keeps ``recall`` of the
    validation photos."""
    from pokedex_trainer.evaluation.calibration import apply_temperature

    bank = feature_bank(predictor, run, keep) if features is not None else None
    if bank is not None and len(bank) < scoring.KNN_K * calibrated.shape[1]:
        logger.warning("knn compares a photo with its %d most similar training photos, and "
                       "this run has %d for %d classes: with fewer than %d a class, its "
                       "scores say little", scoring.KNN_K, len(bank), calibrated.shape[1],
                       scoring.KNN_K)
    unknown, score, chosen_on, contrast = held_out_unknown(run), None, None, None
    if unknown is not None and bank is not None:
        try:
            unknown_bank = feature_bank(predictor, run, keep, kind="unknown")
        except UserError as exc:  # none of those photos readable: the score is left out
            logger.warning("knn_contrast is left out: %s", exc)
            unknown_bank = None
        if unknown_bank is not None:
            contrast = (unknown_bank, scoring.contrast_floor(features, unknown_bank))
    val_scores = scoring.scores(calibrated, logits, features, bank, contrast)
    if unknown is not None:
        try:
            u_probabilities, _, u_logits, u_features = model_outputs(
                predictor, unknown, "held-out unknown photos")
        except UserError:  # none of them readable: the default choice
            logger.warning("none of the held-out unknown photos can be read: the 'unknown' "
                           "score is the default one")
            unknown = None
    if unknown is not None:
        u_scores = scoring.scores(apply_temperature(u_probabilities, temperature), u_logits,
                                  u_features, bank, contrast)
        usable = {name: val_scores[name] for name in val_scores if name in u_scores}
        score = scoring.choose_score(usable, val_scores, u_scores)
        chosen_on = {name: round(scoring.auroc(val_scores[name], u_scores[name]), 4)
                     for name in usable}
    rule = scoring.fit_rule(val_scores, recall, fitted_on, score=score,
                            bank_photos=0 if bank is None else len(bank), contrast=contrast)
    if chosen_on is not None:
        rule["chosen_on"] = {"photos": unknown.description, "auroc": chosen_on}
        threshold = rule["threshold"]
        named = float((u_scores[rule["score"]] >= threshold).mean())
        rule["unknown_named"] = round(named, 4)  # the held-out unknown photos still named
    return rule


class RuleScorer:
    """The score of ``rule`` for one model file: ``score(images, calibrated)``."""

    def __init__(self, rule: dict | None, predictor, run: Path | None, keep: bool = True):
        self.rule, self.predictor, self.bank, self.contrast = rule, predictor, None, None
        self.name = (rule or {}).get("score", scoring.SHIPPED_SCORE)
        self.own = predictor.runtime in ("keras", "pytorch")
        if self.name in scoring.BANK_SCORES and self.own:
            self.bank = feature_bank(predictor, run, keep)
            if self.bank is None:
                raise UserError(f"the 'unknown' rule of {predictor.path.name} is "
                                f"{self.name}, which needs the training photos of its run" + (
                                    ": give --run_dir" if run is None else
                                    f", and '{run}' has none left to read: restore its data "
                                    "folder (files exported earlier carry their own bank)"))
        if self.name == "knn_contrast" and self.own:
            unknown_bank = feature_bank(predictor, run, keep, kind="unknown")
            if unknown_bank is None:
                from pokedex_trainer.data.unknown_photos import HELD_OUT_RECORD

                where = (f"and none of those recorded in its {HELD_OUT_RECORD} is left "
                         "as it was: restore that folder") \
                    if run is not None and (Path(run) / HELD_OUT_RECORD).is_file() else \
                    f"and '{run}' has no record of any (a rule of another run?)"
                raise UserError(f"the 'unknown' rule of {predictor.path.name} is knn_contrast, "
                                f"which needs the --unknown_dir photos its run trained on, "
                                f"{where} (files exported earlier carry their own bank)")
            self.contrast = (unknown_bank, rule["floor"])

    @property
    def banks(self) -> tuple | None:
        """(training bank, unknown bank or None) the exported files carry, or None."""
        return None if self.bank is None else (self.bank, (self.contrast or (None,))[0])

    def score(self, images: np.ndarray, calibrated: np.ndarray,
              file_score: np.ndarray | None = None) -> np.ndarray:
        """The rule's score of uint8 ``images`` (``calibrated``: their calibrated
        probabilities; ``file_score``: the exported file's known_score output, if read)."""
        if self.name == scoring.SHIPPED_SCORE:
            return calibrated.max(axis=1)
        if not self.own:
            if file_score is None:
                file_score = self.predictor.predict_and_score(images)[1]
            if file_score is None:
                raise UserError(f"the 'unknown' rule of {self.predictor.path.name} is "
                                f"{self.name}, but the file has no known_score output")
            return file_score
        inner = self.predictor.logits_and_features(images)
        if inner is None:
            raise UserError(f"the 'unknown' rule is {self.name}, which needs the network's "
                            f"logits and features; {self.predictor.path.name} gives neither")
        return scoring.scores(calibrated, inner[0], inner[1], self.bank,
                              self.contrast)[self.name]
