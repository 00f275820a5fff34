"""evaluate.py --predict: top-k calibrated classes per photo, predictions.csv/.json for the app."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pokedex_trainer.errors import UserError
from pokedex_trainer.evaluation.calibration import apply_temperature
from pokedex_trainer.evaluation.members import Member, load_for_run, saved_calibration
from pokedex_trainer.evaluation.outputs import PREDICTION_FILES, prepared_folder
from pokedex_trainer.evaluation.report import write_csv
from pokedex_trainer.runs.finished import model_and_run
from pokedex_trainer.user_io.atomic import atomic_write_json
from pokedex_trainer.user_io.output_guard import record_outputs

logger = logging.getLogger(__name__)


def exported_rule(run: Path, model_name: str, temperature: float) -> dict | None:
    """The "unknown" rule export.py fitted for this model when evaluate.py had saved none (it
    is in the exported files' sidecars): the same verdicts here as in the exports. Only a
    sidecar of the same source model and temperature counts; unreadable ones are passed over."""
    from pokedex_trainer.evaluation.model_files import SIDECAR_SUFFIX, read_sidecar
    from pokedex_trainer.evaluation.unknown import checked_rule

    for path in sorted((run / "export").glob(f"*{SIDECAR_SUFFIX}")):
        try:
            sidecar = read_sidecar(path.with_name(path.name[:-len(SIDECAR_SUFFIX)]))
            rule = checked_rule(sidecar.get("unknown"), str(path))
        except UserError:
            continue
        if rule and sidecar.get("source_model") == model_name and \
                abs(float(sidecar.get("temperature", 1.0)) - temperature) < 1e-9:
            logger.info("no rule saved by evaluate.py: the one export.py fitted (%s)", path.name)
            return rule
    return None


def predict_command(target: str, run_dir: str | None, model: str | None, top_k: int,
                    threshold: float | None, output_dir: str | None,
                    calibration: str | None = None) -> list[dict]:
    """``--predict``: top-k calibrated classes per image; "unknown" below ``threshold``."""
    from pokedex_trainer.data.scan import is_image_file

    model_path, run = model_and_run(run_dir, model)
    home = run or model_path.parent
    if (home / "index.html").is_file() and (home / "model.json").is_file():
        home = home.parent  # a web page's folder is served to the network: not the photo list
    if Path(target).is_dir():  # before any work: the folder may hold the user's own files
        out = prepared_folder(output_dir, home / "predictions", PREDICTION_FILES,
                              own_default=run is not None)
    predictor = load_for_run(model_path, run)
    member = Member(model_path.name, predictor, run,
                    calibration_file=Path(calibration) if calibration else None)
    saved = saved_calibration(member)
    member.temperature = saved["temperature"] if saved else 1.0
    if saved is None:
        logger.warning("no calibration saved for %s: probabilities are uncalibrated (run "
                       "evaluate.py --run_dir first to fit the temperature)", model_path.name)
    rule = (saved or {}).get("unknown")
    if rule is None and run is not None:
        rule = exported_rule(run, model_path.name, member.temperature)
    scorer = None
    if threshold is None and rule:
        from pokedex_trainer.evaluation.known_score import RuleScorer

        threshold = float(rule["threshold"])
        from pokedex_trainer.evaluation.members import keeps_run_files

        scorer = RuleScorer(rule, predictor, run, keeps_run_files(member))
        logger.info("answering 'unknown' below %s %.3f (the saved rule: it keeps %.0f %% of the "
                    "known photos of %s; --threshold sets a top probability instead)",
                    "a top probability of" if scorer.name == "max_softmax" else
                    f"a {scorer.name} score of", threshold, 100 * rule.get("recall", 0.95),
                    rule.get("fitted_on", "run"))
    target_path = Path(target)
    if target_path.is_dir():
        found = sorted(p for p in target_path.rglob("*") if p.is_file())
        files = [p for p in found if is_image_file(p)]
        others = [p for p in found if p not in files and not p.name.startswith(".")
                  and p.name not in PREDICTION_FILES]
        if others:
            logger.warning("skipped %d file(s) that are not .jpg/.jpeg/.png images: %s%s",
                           len(others), ", ".join(p.name for p in others[:5]),
                           " ..." if len(others) > 5 else "")
        if not files:
            raise UserError(f"'{target}' holds no .jpg/.jpeg/.png image")
    elif target_path.is_file():
        files = [target_path]
    else:
        raise UserError(f"--predict: '{target}' is neither an image nor a folder")
    rows = _predict_files(files, member, top_k, threshold, scorer)
    if all(row.get("error") for row in rows):
        if len(rows) == 1 and target_path.is_file():
            raise UserError(f"--predict: '{target}' cannot be read as an image: "
                            f"{rows[0]['error']}")
        raise UserError(f"--predict: '{target}': none of its {len(rows)} images could be read "
                        f"(the first, '{rows[0]['image']}': {rows[0]['error']})")
    for row in rows:
        shown = ", ".join(f"{c} {p:.1%}" for c, p in zip(row["top_classes"],
                                                          row["top_probabilities"]))
        print(f"{row['image']}: {row['prediction']}  ({shown})" if not row.get("error")
              else f"{row['image']}: skipped ({row['error']})")
    if target_path.is_dir():
        _write_predictions(out, rows, top_k)
        record_outputs(out, PREDICTION_FILES)
        print(f"{len(rows)} predictions written to {out / 'predictions.csv'} and "
              f"{out / 'predictions.json'}")
    return rows


def _predict_files(files: list[Path], member: Member, top_k: int,
                   threshold: float | None, scorer=None) -> list[dict]:
    """One row per file; "unknown" where the rule's score (``scorer``; else the top calibrated
    probability) is below ``threshold``."""
    from tqdm import tqdm

    from pokedex_trainer.data.augment import build_eval_transform
    from pokedex_trainer.data.images import UnreadableImageError, read_image

    names = member.predictor.info.class_names
    transform = build_eval_transform(member.predictor.info.image_size)
    rows = []
    for path in tqdm(files, desc="predicting", unit="img", leave=False,
                     disable=len(files) < 2):
        try:
            image = transform(image=read_image(path))["image"]
        except UnreadableImageError as exc:
            logger.warning("skipped unreadable image %s: %s", path, exc.reason)
            rows.append({"image": str(path), "prediction": "", "confidence": None,
                         "top_classes": [], "top_probabilities": [], "error": exc.reason})
            continue
        raw, file_score = member.predictor.predict_and_score(image[None])
        calibrated = apply_temperature(raw, member.temperature)
        probabilities = calibrated[0]
        order = np.argsort(-probabilities, kind="stable")[:min(top_k, len(names))]
        confidence = float(probabilities[order[0]])
        score = confidence if scorer is None else \
            float(scorer.score(image[None], calibrated, file_score)[0])
        known = threshold is None or score >= threshold
        rows.append({"image": str(path), "prediction": names[order[0]] if known else "unknown",
                     "confidence": confidence, "top_classes": [names[i] for i in order],
                     "top_probabilities": [float(probabilities[i]) for i in order]})
        if scorer is not None and scorer.name != "max_softmax":
            rows[-1]["known_score"] = score  # the rule's score: "unknown" below its threshold
    return rows


def _write_predictions(out: Path, rows: list[dict], top_k: int) -> None:
    atomic_write_json(out / "predictions.json", rows)
    flat = []
    for row in rows:
        entry = {"image": row["image"], "prediction": row["prediction"],
                 "confidence": "" if row["confidence"] is None else f"{row['confidence']:.6f}"}
        for k in range(top_k):
            has = k < len(row["top_classes"])
            entry[f"top{k + 1}_class"] = row["top_classes"][k] if has else ""
            entry[f"top{k + 1}_probability"] = f"{row['top_probabilities'][k]:.6f}" if has else ""
        entry["error"] = row.get("error", "")
        flat.append(entry)
    write_csv(out / "predictions.csv", flat)
