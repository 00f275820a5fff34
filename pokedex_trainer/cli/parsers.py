"""Argument parsers of the command-line scripts. No framework import here: --help stays fast."""

from __future__ import annotations

import argparse

from pokedex_trainer.cli.script_parser import PREFIX_NOTE, ScriptParser
from pokedex_trainer.config import (RECIPE_CHOICES, SCRATCH_DEFAULTS, TRANSFER_DEFAULTS,
                                     TrainActions, TrainConfig, default_workers)
from pokedex_trainer.networks import FRAMEWORKS, MODEL_SPECS


def _defaults_line() -> str:
    rows = [
        f"  {name:<13}{spec.display_name:<15}{spec.framework:<7}"
        f"{spec.image_size[0]}x{spec.image_size[1]}, batch {spec.batch_size}"
        for name, spec in MODEL_SPECS.items()
    ]
    scratch = " ".join(f"--{name} {value}" for name, value in SCRATCH_DEFAULTS.items())
    transfer = " ".join(f"--{name} {value}" for name, value in TRANSFER_DEFAULTS.items()) or \
        "the guide's values"
    return ("per-model defaults (--image_size, --batch_size when omitted):\n" + "\n".join(rows)
            + "\n\nthe options you leave out take the measured recipe of the run (--recipe "
            "guide keeps the guide's values):\n"
            f"  from scratch (--weights none): {scratch}\n"
            f"  transfer (ImageNet or a weights file): {transfer}\n"
            "(see docs/training.md, \"The from-scratch recipe\" and \"The transfer recipe\")"
            "\n\n" + PREFIX_NOTE)


def _batch_size(value: str):
    if value.lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is neither a number nor 'auto'") from None


def _fine_tune_layers(value: str):
    if value.strip().lower() == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is neither a number nor 'all'") from None


EXPORT_FORMATS_HELP = ("comma-separated: tflite, onnx, savedmodel for Keras models; "
                       "torchscript, torch_export, onnx for PyTorch ones (--framework); web "
                       "for both (a static page that runs the model in a browser; needs "
                       "ONNX Runtime Web: npm ci)")


def build_train_parser() -> argparse.ArgumentParser:
    """Parser of ``train_professional_models.py``; flags keep the guide's underscore style."""
    d = TrainConfig()
    parser = ScriptParser(
        prog="train_professional_models.py",
        description="Train an animal classifier in two phases: a new head on a frozen ImageNet "
        "backbone, then the last layers unfrozen at a lower learning rate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_defaults_line(),
    )
    _add_data_options(parser.add_argument_group("data"), d)
    _add_model_options(parser.add_argument_group("model"), d)
    _add_training_options(parser.add_argument_group("training"), d)
    _add_output_options(parser.add_argument_group("output"), d)
    _add_search_options(parser.add_argument_group("hyperparameter search (Optuna)"))
    return parser


SEARCH_ACTIONS = ("search_trials", "search_name", "search_storage", "search_space")


def _add_search_options(search) -> None:
    search.add_argument("--search_trials", type=int, default=None, metavar="N",
                        help="search the hyperparameters: run trials (each a normal run) until "
                             "the study has N finished ones; hopeless trials are pruned after "
                             "an epoch below the median; flags you give stay fixed")
    search.add_argument("--search_name", default=None,
                        help="the study to create or continue (default: <model_type>_<data "
                             "folder name>)")
    search.add_argument("--search_storage", default=None, metavar="URL",
                        help="where the study lives, shared by every process that runs it: "
                             "sqlite:///file.db, postgresql://user:password@host/db, "
                             "mysql+pymysql://..., or an Optuna journal file (*.log) "
                             "(default: sqlite in <output_dir>/search/<name>.db)")
    search.add_argument("--search_space", default=None, metavar="FILE",
                        help="YAML or JSON file that narrows or extends the searched "
                             "hyperparameters (see docs/search.md)")


def _add_workers_option(group) -> None:
    """``--workers``: one meaning (and default) in every script that has it."""
    group.add_argument("--workers", type=int, default=default_workers(),
                       help="worker processes for reading and decoding images; 0 works in "
                            "the main process (default: %(default)s)")


def _add_data_options(data, d: TrainConfig) -> None:
    data.add_argument("--data_path", default=d.data_path,
                      help="folder with one sub-folder of images per class (default: %(default)s)")
    data.add_argument("--val_split", type=float, default=d.val_split,
                      help="fraction of each class held out for validation (default: %(default)s)")
    data.add_argument("--test_split", type=float, default=d.test_split,
                      help="fraction of each class held out for the final test "
                           "(default: %(default)s)")
    _add_workers_option(data)
    data.add_argument("--cache", choices=("none", "ram", "disk"), default=d.cache,
                      help="keep each image decoded and resized after its first epoch: in "
                           "shared memory for this run (ram), or in a memory-mapped file that "
                           "later runs on the same folder and size reuse (disk); augmentation "
                           "stays random (default: %(default)s)")
    data.add_argument("--cache_dir", default=d.cache_dir, metavar="DIR",
                      help="folder of --cache disk, safe to delete between runs "
                           "(default: <output_dir>/cache)")
    data.add_argument("--augment", choices=("none", "light", "full"), default=d.augment,
                      help="augmentation strength: full is the guide's 13 transforms, light "
                           "the random crop, flip and a mild colour change, none resizes only "
                           "(default: %(default)s)")
    data.add_argument("--no_augment", dest="augment", action="store_const", const="none",
                      help="the same as --augment none")
    data.add_argument("--augment_warmup", type=int, default=d.augment_warmup, metavar="N",
                      help="with --augment full: over the first N epochs, a growing share of "
                           "the images (1/(N+1), 2/(N+1), ...) gets the full pipeline and the "
                           "rest the light one (default: %(default)s)")


def _add_model_options(model, d: TrainConfig) -> None:
    model.add_argument("--model_type", choices=sorted(MODEL_SPECS), default=None,
                       help=f"network to train (default: {d.model_type}, or the network of "
                            "--base_model)")
    model.add_argument("--base_model", default=None, metavar="MODEL_FILE",
                       help="start from a model this tool trained (model/ultra/<run>/<arch>_best"
                            ".keras or .pth): its backbone is kept, its head is replaced by a new "
                            "one for this data's classes, then the usual two phases")
    model.add_argument("--weights", default=d.weights,
                       help="'imagenet' (downloaded once, then cached), 'none' (train from "
                            "scratch) or the path of a local weights file of the network, for "
                            "offline machines: a torchvision state dict (.pth) for PyTorch, "
                            "a .weights.h5 / .h5 (or .keras) for Keras; its classifier is "
                            "ignored (default: %(default)s)")
    model.add_argument("--recipe", choices=RECIPE_CHOICES, default=d.recipe,
                       help="auto: the options you leave out take the recipe measured best for "
                            "where the weights come from (see below); guide: the guide's values "
                            "for every run (default: %(default)s)")
    model.add_argument("--image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                       default=None, help="input size (default: the model's, see below)")
    model.add_argument("--framework", choices=FRAMEWORKS, default=d.framework,
                       help="framework the network trains in; every network exists in both. "
                            "auto keeps the guide's pairing (efficientnet and mobilenet on "
                            "Keras, resnet on PyTorch), except where TensorFlow sees no GPU and "
                            "PyTorch does: there all three train on PyTorch (Keras measured "
                            "0.01x-0.25x there); a .pth or .h5 --weights file, --keras_backend "
                            "or KERAS_BACKEND decide it too (default: %(default)s, or the "
                            "framework of --base_model)")
    model.add_argument("--keras_backend", choices=("auto", "tensorflow", "torch", "jax"),
                       default=d.keras_backend,
                       help="Keras 3 backend of a network trained on Keras: auto picks "
                            "TensorFlow when it sees a GPU, else the fastest measured one that "
                            "sees a GPU (JAX, then PyTorch on CUDA or MPS), else TensorFlow on "
                            "the CPU; wins over KERAS_BACKEND (default: %(default)s)")
    model.add_argument("--dropout", type=float, default=d.dropout,
                       help="dropout before the new classification layer (default: %(default)s)")


def _add_training_options(train, d: TrainConfig) -> None:
    train.add_argument("--epochs", type=int, default=d.epochs,
                       help="phase 1 epochs: new head on a frozen backbone (default: %(default)s)")
    train.add_argument("--batch_size", type=_batch_size, default=None,
                       help="images per step, or 'auto' for the largest that trains on this "
                            "machine, with a safety margin (default: the model's, see below)")
    train.add_argument("--kfold", type=int, default=None, metavar="K",
                       help="cross-validation for small datasets: K runs, each tested on one "
                            "stratified K-th of the data; prints mean and standard deviation")
    train.add_argument("--find_batch_size", action="store_true",
                       help="only find and print the largest batch size that trains, then exit")
    train.add_argument("--memory_limit_mb", type=int, default=None,
                       help="memory the batch-size search may use (default: the GPU's memory, "
                            "or free RAM on CPU)")
    train.add_argument("--learning_rate", type=float, default=d.learning_rate,
                       help="phase 1 learning rate, Adam (default: %(default)s)")
    train.add_argument("--fine_tune_epochs", type=int, default=d.fine_tune_epochs,
                       help="phase 2 epochs; 0 skips phase 2 (default: %(default)s)")
    train.add_argument("--fine_tune_layers", type=_fine_tune_layers, default=d.fine_tune_layers,
                       help="phase 2 unfreezes the backbone's last N layers with weights, or "
                            "all of them; BatchNorm stays frozen (default: %(default)s)")
    train.add_argument("--fine_tune_learning_rate", type=float,
                       default=d.fine_tune_learning_rate,
                       help="phase 2 learning rate (default: %(default)s)")
    train.add_argument("--patience", type=int, default=d.patience,
                       help="early stopping: epochs without a better validation accuracy "
                            "(default: %(default)s)")
    train.add_argument("--lr_patience", type=int, default=d.lr_patience,
                       help="reduce the learning rate after this many epochs without a lower "
                            "validation loss (default: %(default)s)")
    train.add_argument("--lr_factor", type=float, default=d.lr_factor,
                       help="factor of each learning-rate reduction (default: %(default)s)")
    train.add_argument("--seed", type=int, default=d.seed,
                       help="seed of the split, the augmentation and the weights "
                            "(default: %(default)s)")
    train.add_argument("--class_weight", choices=("none", "balanced"), default=d.class_weight,
                       help="balanced: weigh each class's loss by n / (classes x its count) "
                            "(default: %(default)s)")
    train.add_argument("--sampler", choices=("none", "balanced"), default=d.sampler,
                       help="balanced: draw training images so every class is seen as often "
                            "(rare classes oversampled) (default: %(default)s)")
    _add_recipe_options(train, d)
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic kernels where the framework has them (slower); with "
                            "--seed, a repeated run gives the same numbers")
    train.add_argument("--mixed_precision", action="store_true",
                       help="float16 compute on GPU (bfloat16 on CPU, usually slower there)")
    train.add_argument("--compile", action="store_true",
                       help="compile the training step: torch.compile on PyTorch, "
                            "jit_compile=True on Keras (XLA on TensorFlow and JAX, "
                            "torch.compile on Keras' PyTorch backend); the first epoch is "
                            "slower while it compiles. Measure it: "
                            "benchmarks/train_throughput.py --compile")


def _add_recipe_options(train, d: TrainConfig) -> None:
    """Options of the training recipe; each has the same meaning in Keras and PyTorch."""
    train.add_argument("--label_smoothing", type=float, default=d.label_smoothing,
                       help="train on targets 1 - s + s/classes for the true class and "
                            "s/classes for the others (default: %(default)s)")
    train.add_argument("--lr_schedule", choices=("plateau", "cosine"), default=d.lr_schedule,
                       help="plateau: reduce the rate when the validation loss stalls "
                            "(--lr_patience, --lr_factor); cosine: in each phase, a linear "
                            "warm-up over --warmup_epochs then a cosine decay to --min_lr by "
                            "the phase's last epoch (default: %(default)s)")
    train.add_argument("--warmup_epochs", type=int, default=d.warmup_epochs,
                       help="cosine: epochs of linear warm-up at the start of each phase "
                            "(default: %(default)s)")
    train.add_argument("--min_lr", type=float, default=d.min_lr,
                       help="lowest learning rate of either schedule (default: %(default)s)")
    train.add_argument("--optimizer", choices=("adam", "adamw"), default=d.optimizer,
                       help="adam, or adamw with decoupled weight decay (default: %(default)s)")
    train.add_argument("--weight_decay", type=float, default=d.weight_decay,
                       help="adamw's weight decay (default: %(default)s)")
    train.add_argument("--unknown_dir", default=d.unknown_dir, metavar="DIR",
                       help="photos of none of the classes (other animals, rooms, streets; any "
                            "layout), trained towards 'none of them' (outlier exposure: the "
                            "answer on them is pushed to uniform, so the fitted 'unknown' rule "
                            "catches what the model does not know); never a class of its own. "
                            "'builtin': 500 generated far-away images (noise, textures, "
                            "digits) that need no folder")
    train.add_argument("--unknown_weight", type=float, default=d.unknown_weight,
                       help="weight of an unknown photo's loss against a labelled photo's "
                            "(default: %(default)s)")
    train.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                       help="validate and save an exponential moving average of the weights, "
                            "updated every step with this decay (e.g. 0.999); 0 turns it off "
                            "(default: %(default)s)")


def _add_output_options(out, d: TrainConfig) -> None:
    out.add_argument("--output_dir", default=d.output_dir,
                     help="where run directories and experiments.csv go (default: %(default)s)")
    out.add_argument("--log_dir", default=d.log_dir,
                     help="TensorBoard root; each run writes <log_dir>/<run> "
                          "(default: %(default)s)")
    out.add_argument("--histogram_freq", type=int, default=d.histogram_freq,
                     help="write weight, gradient and layer-activation histograms every N "
                          "epochs; 0 turns them off (they cost a forward and backward pass per "
                          "N epochs) (default: %(default)s)")
    out.add_argument("--save_every", type=int, default=d.save_every,
                     help="also keep the model of every N-th epoch (default: 0, only best and "
                          "final)")
    out.add_argument("--save_h5", action="store_true",
                     help="Keras networks: also save the final model as <arch>_final_<stamp>.h5 "
                          "(legacy HDF5, the file the guide's snippets open) beside the .keras")
    out.add_argument("--keep_resume", action="store_true",
                     help="keep the run's resume state (resume/: the model and its optimizer, "
                          "about 3x the model's size) once it finishes; by default a finished "
                          "run keeps its best and final models only")
    out.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue an interrupted run from its last finished epoch, with its "
                          "own configuration (other flags but --workers are ignored)")
    out.add_argument("--export", nargs="?", const="all", default=None, metavar="FORMATS",
                     help="after training, export the best model and check each file against "
                          "it; " + EXPORT_FORMATS_HELP + ". Without a value: every format of the "
                          "network's framework")
    out.add_argument("--run_name", default=None,
                     help="name of the run directory (default: <model_type>_<timestamp>)")
    out.add_argument("--live_log", default=None, metavar="FILE",
                     help="shared live log every run appends to, each line prefixed with the "
                          "run name; follow it with tail -f or Get-Content -Wait; 'none' turns "
                          "it off (default: training.log in the current folder)")


TRAIN_ACTIONS = ("resume", "find_batch_size", "export", "kfold", "live_log")


def parse_train_command(argv: list[str] | None = None,
                        parser: argparse.ArgumentParser | None = None
                        ) -> tuple[TrainConfig, TrainActions]:
    """The trainer's command line as an unresolved TrainConfig and the TrainActions
    (``resume``, ``find_batch_size``...) that are not part of a run's configuration, with the
    options given explicitly and the values the run took from its recipe (config.RECIPES)."""
    values = vars((parser or build_train_parser()).parse_args(argv))
    chosen = {key: values.pop(key) for key in TRAIN_ACTIONS + SEARCH_ACTIONS}
    explicit = explicit_train_options(argv)
    if values["image_size"] is not None:
        values["image_size"] = tuple(values["image_size"])
    if values["model_type"] is None:
        values["model_type"] = TrainConfig.model_type
        if values["base_model"]:
            values["model_type"] = None  # taken from the base model (apply_base_model)
    config, recipe_defaults = TrainConfig(**values).with_recipe_defaults(explicit)
    return config, TrainActions(**chosen, explicit=explicit, recipe_defaults=recipe_defaults)


def explicit_train_options(argv: list[str] | None) -> dict:
    """The options the command line gives explicitly (destination -> value), defaults left out:
    what a search keeps fixed and the from-scratch defaults leave alone."""
    parser = build_train_parser()
    for action in parser._actions:  # argparse has no public way to tell given from default
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the trainer's command line into an unresolved TrainConfig."""
    return parse_train_command(argv)[0]


def train_option_actions() -> dict:
    """Destination -> the argparse action of its first option in the trainer's parser, the
    search's own options and --help left out: what a search writes its trials' command
    lines with (``search.trials.command_parts``)."""
    actions = {}
    for action in build_train_parser()._actions:  # the first option of a destination wins
        if action.option_strings and action.dest not in SEARCH_ACTIONS + ("help",):
            actions.setdefault(action.dest, action)
    return actions


def build_prepare_parser() -> argparse.ArgumentParser:
    """Parser of ``prepare_dataset.py``."""
    from pokedex_trainer.prepare.convert import MODES

    parser = ScriptParser(
        prog="prepare_dataset.py", epilog=PREFIX_NOTE,
        description="Standardize a raw photo collection (one folder per class) into a clean "
                    "training folder, and report unreadable files, duplicates, small images and "
                    "class balance.")
    parser.add_argument("--input_dir", default="data/raw_images",
                        help="raw collection, one sub-folder per class (default: %(default)s)")
    parser.add_argument("--output_dir", default="data/training",
                        help="where the standardized images go (default: %(default)s)")
    parser.add_argument("--size", type=int, default=600,
                        help="side of the square output images in px (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="crop",
                        help="crop: centre square, keeps the aspect ratio (default); pad: whole "
                             "image on a square canvas; stretch: squash to a square (the guide's "
                             "original script)")
    parser.add_argument("--check", action="store_true",
                        help="only inspect --input_dir and write the report; no image is written")
    parser.add_argument("--strict", action="store_true",
                        help="exit with code 1 when the guide's minimums are not met (10 classes, "
                             "100 images per class, 224 px)")
    parser.add_argument("--class_map", default=None,
                        help="rename classes: a JSON file {\"old\": \"New\"}, 'animals10' "
                             "(applied by itself to Animals-10's Italian folder names) or "
                             "'none' (keep the folder names)")
    _add_workers_option(parser)
    return parser


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = ScriptParser(
        prog="evaluate.py", epilog=PREFIX_NOTE,
        description="Evaluate a trained or exported model on images it never saw (accuracy, "
                    "top-5, per-class precision/recall/F1, confusion matrix, calibration, "
                    "latency), an ensemble of runs, predict photos for the app, or compare "
                    "runs (--experiments).")
    source = parser.add_argument_group("what to evaluate")
    source.add_argument("--run_dir", help="a run directory: its best model on its test split")
    source.add_argument("--model", help="any model file this tool writes: .keras, .h5, .pth, "
                                        ".onnx, .tflite, .pt, .pt2 or a SavedModel folder")
    source.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                        help="average the calibrated probabilities of these runs' best models")
    source.add_argument("--data_path", help="evaluate on this labelled folder instead of the "
                                            "run's test split (same classes as the model)")
    source.add_argument("--output_dir", help="where the report goes; a file already there is "
                                             "replaced only if evaluate.py wrote it (default: "
                                             "<run_dir>/evaluation)")
    source.add_argument("--trust_model_file", action="store_true",
                        help="open a TorchScript (.pt) or SavedModel file that export.py did not "
                             "write for you: they can run code when opened, so only for files "
                             "you know the origin of")
    source.add_argument("--calibration", metavar="FILE", default=None,
                        help="where the temperature fitted on the run's validation split is "
                             "saved (and --predict reads it) (default: <run_dir>/"
                             "calibration.json)")
    source.add_argument("--latency_runs", type=int, default=20,
                        help="timed batch-1 calls after 3 warm-up calls (default: %(default)s)")
    source.add_argument("--latency_batch", type=int, default=32,
                        help="batch size of the throughput figure (default: %(default)s)")
    source.add_argument("--unknown_data", metavar="DIR",
                        help="a folder of photos of none of the classes (any layout): the "
                             "report measures how well each score tells them from the known "
                             "test photos (AUROC, FPR at 95%% known recall, histograms, "
                             "accuracy-coverage)")
    source.add_argument("--unknown_recall", type=float, default=0.95,
                        help="share of the known validation photos the fitted 'unknown' rule "
                             "keeps (saved with the temperature; --predict and the exports "
                             "apply it) (default: %(default)s)")
    predict = parser.add_argument_group("predictions for the app")
    predict.add_argument("--predict", metavar="IMAGE_OR_DIR",
                         help="print the top classes of an image, or of every image of a folder "
                              "(then also written to predictions.csv / .json)")
    predict.add_argument("--top_k", type=int, default=3,
                         help="classes shown per image (default: %(default)s)")
    predict.add_argument("--threshold", type=float, default=None,
                         help="answer 'unknown' when the top calibrated probability is below it "
                              "(default: the rule evaluate.py fitted, or the export's sidecar)")
    runs = parser.add_argument_group("comparing runs")
    runs.add_argument("--experiments", metavar="OUTPUT_DIR",
                      help="print the experiments table of OUTPUT_DIR (e.g. model/ultra) "
                           "sorted by --sort_by and write experiments.png beside it")
    runs.add_argument("--sort_by", default="best_val_accuracy",
                      help="column to sort by, best first (default: %(default)s)")
    search = parser.add_argument_group("hyperparameter search")
    search.add_argument("--search", metavar="NAME",
                        help="report of a search (train_professional_models.py "
                             "--search_trials): its trials, the best one's command line, "
                             "history and importance plots; NAME or its .db file")
    search.add_argument("--search_storage", metavar="URL",
                        help="the search's database when it is not the default SQLite file "
                             "(the same URL as for the search)")
    return parser


def build_export_parser() -> argparse.ArgumentParser:
    parser = ScriptParser(
        prog="export.py", epilog=PREFIX_NOTE,
        description="Export a trained model to TFLite / ONNX / SavedModel (Keras) or "
                    "TorchScript / torch.export / ONNX (PyTorch). Every file is checked against "
                    "its source model on validation images, in its own runtime, before it is "
                    "reported as written; each gets a sidecar JSON (class names, input) beside it.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run_dir", help="export the best model of this run directory")
    source.add_argument("--model", help="export this model file (.keras, .h5 or .pth)")
    source.add_argument("--serve", metavar="RUN_OR_WEB_DIR",
                        help="serve an exported web page (a run directory or its export/web "
                             "folder) on the local network over HTTPS, with a certificate made "
                             "once for this computer, and print its address and a QR code for "
                             "a phone; Ctrl-C stops")
    parser.add_argument("--port", type=int, default=8443,
                        help="--serve: the port (default: %(default)s)")
    parser.add_argument("--bind", default="0.0.0.0",
                        help="--serve: the address to listen on; 127.0.0.1 keeps the page to "
                             "this computer (default: %(default)s, every network)")
    parser.add_argument("--formats", default=None,
                        help=EXPORT_FORMATS_HELP + " (default: every format of the framework)")
    parser.add_argument("--tflite_precisions", default=None,
                        help="comma-separated TFLite precisions: float32, float16 (the guide's "
                             "default), dynamic_int8, int8 (full integer, calibrated on training "
                             "images) (default: all four)")
    parser.add_argument("--output_dir", default=None,
                        help="where the files and exports.json go; the run directory is then "
                             "only read, and a file already there is replaced only if export.py "
                             "wrote it (default: <run_dir>/export, exports.json in <run_dir>)")
    parser.add_argument("--calibration", metavar="FILE", default=None,
                        help="calibration.json whose temperature the sidecars carry "
                             "(default: <run_dir>/calibration.json, written by evaluate.py)")
    parser.add_argument("--data_path", default=None,
                        help="labelled folder for the check and the int8 calibration, for a "
                             "model outside a run directory (default: the run's own split)")
    parser.add_argument("--check_images", type=int, default=100,
                        help="validation images the parity check uses (default: %(default)s)")
    parser.add_argument("--calibration_images", type=int, default=200,
                        help="training images that calibrate full int8 (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=18,
                        help="ONNX opset: 14-18 for Keras (tf2onnx), 18-25 for PyTorch "
                             "(default: %(default)s)")
    parser.add_argument("--web_precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="the web page's model: float32, or the smaller float16 / dynamic "
                             "int8 variant, each checked like any export (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the web page answers 'unknown' when the top calibrated "
                             "probability is below it, as evaluate.py --predict --threshold "
                             "(default: the fitted 'unknown' rule; the page has a slider)")
    return parser
