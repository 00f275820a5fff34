"""Call levels and files from train_professional_models.py to the batch loop (issue 36).

    python benchmarks/call_depth.py --work_dir /tmp/call_depth

Trains a tiny PyTorch run (the test network, 12 generated photos, one epoch) through the
script itself, in this process, and records the project's frames on the call stack when the
batch loop (``Runner.train_one_epoch``) starts: their count (the call levels a reader follows
from the script to the batches) and the files they are in. Prints one line per frame and the
two counts; ``--output`` writes them as JSON. Not a speed benchmark: the stack is the same on
any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", required=True, help="photos and the tiny run go here")
    parser.add_argument("--output", default=None, help="JSON file of the frames and counts")
    return parser.parse_args(argv)


def measure(work: Path) -> dict:
    """The project's frames from the script to the batch loop of a tiny run."""
    os.environ["POKEDEX_TEST_MODELS"] = "1"
    sys.path.insert(0, str(ROOT))
    from pokedex_trainer.data.synthetic import write_dataset
    import pokedex_trainer.backends.torch.runner as runner_module

    data = work / "photos"
    if not data.is_dir():
        write_dataset(data, classes=["a", "b"], per_class=6, size=(40, 40), seed=1)
    found: dict = {}
    real = runner_module.Runner.train_one_epoch

    def spy(self, *args, **kwargs):
        frames = [(Path(frame.filename).resolve(), frame.name)
                  for frame in traceback.extract_stack()]
        found["frames"] = [(path.relative_to(ROOT).as_posix(), name) for path, name in frames
                           if path == ROOT / "train_professional_models.py"
                           or path.is_relative_to(ROOT / "pokedex_trainer")]
        return real(self, *args, **kwargs)

    runner_module.Runner.train_one_epoch = spy
    saved_argv = sys.argv
    sys.argv = ["train_professional_models.py", "--data_path", str(data), "--model_type",
                "tiny_torch", "--weights", "none", "--image_size", "32", "32", "--epochs", "1",
                "--fine_tune_epochs", "0", "--batch_size", "4", "--workers", "0",
                "--output_dir", str(work / "runs"), "--log_dir", str(work / "tensorboard"),
                "--live_log", "none", "--histogram_freq", "0"]
    try:
        runpy.run_path(str(ROOT / "train_professional_models.py"), run_name="__main__")
    except SystemExit:
        pass
    finally:
        sys.argv = saved_argv
        runner_module.Runner.train_one_epoch = real
    frames = found["frames"] + [("pokedex_trainer/backends/torch/runner.py", "train_one_epoch")]
    return {"frames": [f"{path}:{name}" for path, name in frames], "levels": len(frames),
            "files": len({path for path, _ in frames})}


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(Path(args.work_dir))
    for frame in result["frames"]:
        print(f"  {frame}")
    print(f"{result['levels']} call levels in {result['files']} files, from the script to the "
          "batch loop")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
