"""The trainer's own pace, read from a finished run: training images per second of wall time
over each epoch after the first (loader, cache and validation included), median.

    python benchmarks/trainer_pace.py model/ultra/<run> --output pace.json

Epoch 1 is left out (graph building, compilation, worker start-up, the cache filling). The
images of an epoch are the training split less the last, smaller batch (the trainer drops it).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pokedex_trainer.errors import UserError  # noqa: E402
from pokedex_trainer.runs.store import RunStore  # noqa: E402


def pace(run_dir: Path) -> dict:
    store = RunStore(run_dir)
    config = store.config_values()
    train = len(store.manifest()["splits"]["train"])
    batch = int(config["batch_size"])
    per_epoch = train // batch * batch if train > batch else train
    seconds = [float(row["epoch_time_s"]) for row in store.history_rows()]
    if len(seconds) < 2:
        raise UserError(f"{run_dir}: needs two epochs or more (the first is left out)")
    log = store.log_text()
    backend = re.search(r"Keras backend: (\w+)", log)
    framework = config.get("framework", "keras" if backend else "pytorch")
    return {"kind": "trainer", "model_type": config["model_type"], "framework": framework,
            "backend": backend.group(1) if backend else "torch",
            "batch_size": batch, "image_size": config["image_size"],
            "mixed_precision": bool(config.get("mixed_precision")),
            "compile": bool(config.get("compile")), "cache": config.get("cache", "none"),
            "workers": config.get("workers"), "images_per_epoch": per_epoch,
            "epoch_seconds": seconds,
            "images_per_second": per_epoch / statistics.median(seconds[1:]),
            "machine": platform.platform(), "python": platform.python_version()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    try:
        result = pace(Path(args.run_dir))
    except (UserError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"trainer {result['model_type']} ({result['framework']} on {result['backend']}): "
          f"{result['images_per_second']:.1f} train img/s over the epochs after the first")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
