"""evaluate.py --unknown_data DIR: the report's section on photos of none of the classes.

Every score of evaluation/unknown.py is measured on the known test photos against the unknown
folder (AUROC, FPR at 95 % known recall, the histogram of both, the accuracy-coverage curve);
the shipped rule (the top calibrated probability under the threshold fitted on the validation
split) is measured as the app applies it: how many unknown photos it still names as a species.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pokedex_trainer.evaluation import unknown as scoring
from pokedex_trainer.evaluation.calibration import apply_temperature
from pokedex_trainer.runs.finished import LabelledImages, run_split

logger = logging.getLogger(__name__)


def unknown_images(folder: Path, class_names: list[str], known: list[LabelledImages],
                   run: Path | None = None) -> LabelledImages:
    """The unknown folder as images (label -1), refused in one line when it shares a photo
    with the classes' photos, with a warning when it holds photos ``run`` trained on as
    unknown (its own --unknown_dir, or copies of those photos)."""
    from pokedex_trainer.data.unknown_photos import (check_no_shared_photos, photo_files,
                                                     photo_hashes)

    folder = Path(folder)
    files = photo_files(folder, "--unknown_data")
    hashes = photo_hashes(files)
    check_no_shared_photos(hashes, [images.root / relative for images in known
                                    for relative, _ in images.samples])
    _warn_if_trained_on(run, folder, hashes)
    return LabelledImages(folder, list(class_names),
                          [(path.relative_to(folder).as_posix(), -1) for path in files],
                          f"{folder} ({len(files)} unknown photos)")


def _warn_if_trained_on(run: Path | None, folder: Path, hashes: dict[Path, str]) -> None:
    """The run's own --unknown_dir measured as unknown photos: figures too good to trust."""
    from pokedex_trainer.runs.store import RunStore

    if run is None or not RunStore(run).is_run():
        return
    trained = RunStore(run).saved_config().unknown_dir
    if not trained:
        return
    if trained == "builtin":
        from pokedex_trainer.data.unknown_photos import BUILTIN_FOLDER

        same = BUILTIN_FOLDER in Path(folder).resolve().parts
    else:
        same = Path(trained).resolve() == Path(folder).resolve()
    if same:
        logger.warning("--unknown_data '%s' is the folder this run trained on as unknown "
                       "(--unknown_dir): the figures below are optimistic; measure with photos "
                       "it never saw", folder)
        return
    seen = _recorded_unknown_hashes(run)
    shared = sum(digest in seen for digest in hashes.values())
    if shared:
        logger.warning("%d photos of --unknown_data '%s' are photos this run trained on or "
                       "chose its 'unknown' score with (the same content, from its "
                       "--unknown_dir): the figures below are optimistic; measure with "
                       "photos it never saw", shared, folder)


def _recorded_unknown_hashes(run: Path) -> set[str]:
    """The contents of the --unknown_dir photos a run trained on or held out, as recorded."""
    import json

    from pokedex_trainer.data.unknown_photos import HELD_OUT_RECORD

    try:
        data = json.loads((Path(run) / HELD_OUT_RECORD).read_text("utf-8"))
        return {str(entry["hash"]) for key in ("photos", "trained")
                for entry in data.get(key, [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()  # none recorded, or a damaged record (said where it is read)


def measure_unknown(member, test: LabelledImages, labels: np.ndarray, folder: Path,
                    out: Path) -> dict:
    """The ``unknown`` section of metrics.json (and its two plots in ``out``)."""
    from pokedex_trainer.evaluation import plots

    predictor, run = member.predictor, member.run_dir
    known_sets = [test] + ([run_split(run, split) for split in ("train", "val")] if run else [])
    unknown = unknown_images(folder, predictor.info.class_names, known_sets, run)
    from pokedex_trainer.evaluation.known_score import RuleScorer, feature_bank, model_outputs

    probabilities, _, logits, features = model_outputs(predictor, test,
                                                       "known photos (scores)")
    u_probabilities, _, u_logits, u_features = model_outputs(predictor, unknown,
                                                             "unknown photos")
    from pokedex_trainer.evaluation.members import keeps_run_files

    bank = feature_bank(predictor, run, keeps_run_files(member)) \
        if features is not None else None
    rule = member.calibration.get("unknown")
    contrast = None
    if bank is not None and (rule or {}).get("floor") is not None:
        unknown_bank = feature_bank(predictor, run, keeps_run_files(member), kind="unknown")
        contrast = None if unknown_bank is None else (unknown_bank, rule["floor"])
    calibrated = apply_temperature(probabilities, member.temperature)
    u_calibrated = apply_temperature(u_probabilities, member.temperature)
    known_scores = scoring.scores(calibrated, logits, features, bank, contrast)
    unknown_scores = scoring.scores(u_calibrated, u_logits, u_features, bank, contrast)
    if rule and rule["score"] not in known_scores:  # an export: its own known_score output
        scorer = RuleScorer(rule, predictor, run, keeps_run_files(member))
        known_scores[rule["score"]] = _file_scores(scorer, test)
        unknown_scores[rule["score"]] = _file_scores(scorer, unknown)
    correct = calibrated.argmax(axis=1) == labels
    table = {name: {"auroc": scoring.auroc(known_scores[name], unknown_scores[name]),
                    "fpr_at_95_recall": scoring.fpr_at_recall(known_scores[name],
                                                              unknown_scores[name])}
             for name in known_scores}
    section = {"photos": len(u_probabilities), "folder": str(folder), "scores": table,
               "coverage": {name: scoring.coverage_curve(score, correct)
                            for name, score in known_scores.items()},
               "shipped_rule": rule}
    if rule:
        threshold = rule["threshold"]
        section["named_as_species"] = float(
            (unknown_scores[rule["score"]] >= threshold).mean())
        section["known_kept"] = float((known_scores[rule["score"]] >= threshold).mean())
    if logits is None:
        section["note"] = ("max_logit, energy, knn and knn_contrast need the network's logits "
                           "and features: "
                           "evaluate the run's own model file (.keras or .pth) for them")
    plots.plot_unknown_scores(known_scores, unknown_scores, table, out / "unknown_scores.png")
    plots.plot_coverage(section["coverage"], out / "accuracy_coverage.png")
    return section


def _file_scores(scorer, images: LabelledImages) -> np.ndarray:
    """The rule's score of every readable image, read from the exported file itself."""
    return np.concatenate([scorer.score(batch, None)
                           for batch, _ in images.load(scorer.predictor.info.image_size, 32)])


def unknown_line(section: dict) -> str:
    """How well the model knows what it does not know, in one line."""
    best = max(section["scores"], key=lambda name: section["scores"][name]["auroc"])
    name = (section.get("shipped_rule") or {}).get("score", scoring.SHIPPED_SCORE)
    shipped = section["scores"][name]
    text = (f"unknown photos ({section['photos']}): AUROC {shipped['auroc']:.3f} with the "
            f"shipped score ({name}), {shipped['fpr_at_95_recall']:.0%} named "
            f"as a species at 95 % known recall")
    if "named_as_species" in section:
        text += (f"; the shipped threshold {section['shipped_rule']['threshold']:.3f} names "
                 f"{section['named_as_species']:.0%} of them as a species and keeps "
                 f"{section['known_kept']:.0%} of the known photos")
    if best != name:
        text += f"; best score: {best} (AUROC {section['scores'][best]['auroc']:.3f})"
    return text


def unknown_markdown(section: dict) -> list[str]:
    lines = ["", "## Photos of none of the classes", "", unknown_line(section) + ".", "",
             "| score | AUROC | FPR at 95 % known recall |", "| --- | --- | --- |"]
    lines += [f"| {name} | {row['auroc']:.4f} | {row['fpr_at_95_recall']:.1%} |"
              for name, row in section["scores"].items()]
    if section.get("note"):
        lines += ["", section["note"] + "."]
    lines += ["", "![scores of known and unknown photos](unknown_scores.png)",
              "![accuracy against coverage](accuracy_coverage.png)", ""]
    return lines
