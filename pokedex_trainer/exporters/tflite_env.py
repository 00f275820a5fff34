"""The environment that turns a PyTorch model into the app's TFLite file, made for the user.

litert-torch (PyTorch -> TFLite) pins older pydantic and typing_extensions than the training
environment needs, so it cannot live in the README's one install. Where it is not importable,
``export.py --formats tflite`` on a PyTorch model makes, once, a virtual environment of its own
that sees every package of the environment export.py runs in (a ``.pth`` file naming that
environment's site-packages: a virtual environment's, not the system's, unlike
``python -m venv --system-site-packages``) and installs ``requirements-tflite.txt`` there; its
own packages come first on its path, so its pins win inside it and change nothing outside. The
conversion runs in it as a child process, on a ``torch.export`` program written here; the file
it writes is checked in LiteRT in this process like every export.

Where: ``POKEDEX_TFLITE_ENV``, else ``~/.pokedex_ultra/tflite-env/<hash of this environment>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

ENV_VARIABLE = "POKEDEX_TFLITE_ENV"
PROJECT = Path(__file__).resolve().parents[2]
REQUIREMENTS = PROJECT / "requirements-tflite.txt"
READY_MARK = ".pokedex_tflite_ready"  # written once litert-torch imports in the environment
CONVERT_TIMEOUT_S = 3600


def env_folder() -> Path:
    """Where the TFLite environment of this Python environment lives."""
    from pokedex_trainer.user_io.env_values import env_path

    given = env_path(ENV_VARIABLE)
    if given is not None:
        return given
    key = hashlib.sha256(str(Path(sys.prefix).resolve()).encode("utf-8")).hexdigest()[:10]
    return Path.home() / ".pokedex_ultra" / "tflite-env" / key


def env_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _parent_paths() -> list[str]:
    """This environment's site-packages, which the TFLite environment sees after its own."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(p for p in paths if Path(p).is_dir()))


def _env_site_packages(python: Path) -> Path:
    result = subprocess.run([str(python), "-c", "import sysconfig; "
                             "print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise UserError(f"the TFLite environment '{python.parent.parent}' does not run: "
                        f"{(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return Path(result.stdout.strip())


def _runs_litert_torch(python: Path) -> bool:
    if not python.is_file():
        return False
    result = subprocess.run([str(python), "-c", "import litert_torch, torch"],
                            capture_output=True, text=True, timeout=600)
    return result.returncode == 0


def ensure_env(requirements: Path = REQUIREMENTS) -> Path:
    """The TFLite environment's Python, made and filled first when it is not there yet.

    Raises UserError (one line) when it cannot be made: no network for pip, a folder that
    cannot be written, an environment of something else at ``POKEDEX_TFLITE_ENV``.
    """
    folder = env_folder()
    python = env_python(folder)
    if (folder / READY_MARK).is_file() and python.is_file():
        return python
    if folder.exists() and not (folder / "pyvenv.cfg").is_file():
        raise UserError(f"{ENV_VARIABLE} '{folder}' exists and is not a virtual environment: "
                        "name a new folder (it is made there)")
    if not _runs_litert_torch(python):
        logger.info("TFLite from a PyTorch model needs litert-torch, which cannot share this "
                    "environment (it pins older pydantic and typing_extensions): installing it "
                    "once into its own environment %s (it sees this one's packages; about "
                    "1 GB on disk)", folder)
        _make(folder, python, requirements)
    if not _runs_litert_torch(python):
        raise UserError(f"the TFLite environment '{folder}' cannot import litert-torch: remove "
                        f"that folder and export again (or set {ENV_VARIABLE})")
    (folder / READY_MARK).write_text(sys.prefix + "\n", encoding="utf-8")
    return python


def _make(folder: Path, python: Path, requirements: Path) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not python.is_file():
            _checked([sys.executable, "-m", "venv", str(folder)], "make the environment")
        site = _env_site_packages(python)
        (site / "_pokedex_parent_environment.pth").write_text(
            "".join(path + "\n" for path in _parent_paths()), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"the TFLite environment '{folder}' cannot be made: "
                        f"{exc.strerror or exc}") from None
    _checked([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r",
              str(requirements)], f"install {requirements.name} into it", show=True)


def _checked(command: list[str], what: str, show: bool = False) -> None:
    """Run a setup step; its output is shown (pip's progress) or kept for the error line."""
    result = subprocess.run(command, text=True, stdout=None if show else subprocess.PIPE,
                            stderr=subprocess.STDOUT if not show else None)
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-1:] if not show else []
        raise UserError(f"could not {what} (exit code {result.returncode})"
                        + (f": {tail[0]}" if tail else "; its output is above")
                        + " -- is the package registry reachable?")


def convert_in_env(program: Path, example_shape: tuple[int, ...], target: Path) -> None:
    """Convert a ``torch.export`` program (written by this process) to TFLite in the TFLite
    environment; ``target`` gets the raw flatbuffer."""
    python = ensure_env()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PROJECT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [str(python), "-m", "pokedex_trainer.exporters.tflite_convert", str(program),
               ",".join(map(str, example_shape)), str(target)]
    logger.info("converting to TFLite with litert-torch in %s", python.parent.parent)
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True,
                                timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"the TFLite conversion did not end within {CONVERT_TIMEOUT_S} s"
                        ) from None
    if result.returncode != 0 or not target.is_file():
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise UserError("the TFLite conversion in litert-torch's environment failed: "
                        + (lines[-1] if lines else f"exit code {result.returncode}"))
