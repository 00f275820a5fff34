"""benchmarks/imagenet_transfer.py: the weights file's hash check and where it is placed."""

import hashlib
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import imagenet_transfer as transfer  # noqa: E402


def named_by_hash(folder, data: bytes, digits: int = 8, stem: str = "tiny_net"):
    """A file whose name carries the first ``digits`` hex digits of its SHA-256, as torch's."""
    prefix = hashlib.sha256(data).hexdigest()[:digits]
    path = folder / f"{stem}-{prefix}.pth"
    path.write_bytes(data)
    return path


def test_hash_check_accepts_a_file_whose_hash_matches_its_name(tmp_path):
    path = named_by_hash(tmp_path, b"weights")
    assert transfer.check_hash_prefix(path) == hashlib.sha256(b"weights").hexdigest()


def test_hash_check_refuses_a_file_whose_hash_does_not_match_its_name(tmp_path):
    path = named_by_hash(tmp_path, b"weights")
    path.write_bytes(b"weights, altered")
    with pytest.raises(transfer.TransferError, match="does not begin with"):
        transfer.check_hash_prefix(path)


def test_hash_check_refuses_a_name_without_a_prefix(tmp_path):
    path = tmp_path / "mobilenet_v2.pth"
    path.write_bytes(b"weights")
    with pytest.raises(transfer.TransferError, match="no hash prefix"):
        transfer.check_hash_prefix(path)


def test_weights_go_where_torchvisions_loader_looks(tmp_path, monkeypatch):
    import torch.hub

    source = named_by_hash(tmp_path, b"weights", stem="mobilenet_v2")
    torch_home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no torch.hub.set_dir() override
    placed = transfer.place_weights(source, torch_home)
    # torch.hub.load_state_dict_from_url (torchvision's weights API) reads
    # get_dir()/checkpoints/<the URL's file name>.
    assert placed == transfer.checkpoints_dir(torch_home) / source.name
    assert Path(torch.hub.get_dir()).resolve() / "checkpoints" == placed.parent.resolve()
    assert placed.read_bytes() == b"weights"


def test_the_known_file_name_carries_the_known_digest():
    assert transfer.WEIGHTS_SHA256.startswith(
        transfer.HASH_PREFIX.search(transfer.WEIGHTS_FILE).group(1))


def test_help_and_a_bad_option_are_answered_before_any_download(tmp_path):
    import subprocess

    script = str(ROOT / "benchmarks" / "imagenet_transfer.py")
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout
    result = subprocess.run([sys.executable, script, "--wheel", str(tmp_path / "missing.whl")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such file" in result.stderr.strip().splitlines()[-1]
