"""Class scan, stratified leak-free split, manifest."""

import pytest

from pokedex_trainer.data.scan import scan_dataset, split_counts, stratified_split
from pokedex_trainer.errors import UserError


def test_scan_finds_classes_in_sorted_order_and_ignores_hidden_files(dataset_copy):
    (dataset_copy / "Gato" / ".hidden.jpg").write_bytes(b"x")
    (dataset_copy / "Gato" / "Thumbs.db").write_bytes(b"x")
    (dataset_copy / "Gato" / "notes.txt").write_text("x")
    (dataset_copy / ".git").mkdir()
    (dataset_copy / "__MACOSX").mkdir()
    (dataset_copy / "__MACOSX" / "a.jpg").write_bytes(b"x")
    upper = dataset_copy / "Perro" / "EXTRA.JPG"
    upper.write_bytes((dataset_copy / "Perro" / "Perro_0000.jpg").read_bytes())
    index = scan_dataset(dataset_copy)
    assert index.class_names == ["Gato", "León", "Perro"]
    counts = index.counts()
    assert counts == {"Gato": 12, "León": 12, "Perro": 13}
    assert all(not p.split("/")[-1].startswith(".") for p, _ in index.samples)


def test_split_is_deterministic_stratified_and_leak_free(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    first = stratified_split(index, 0.25, 0.25, seed=7)
    again = stratified_split(index, 0.25, 0.25, seed=7)
    other = stratified_split(index, 0.25, 0.25, seed=8)
    assert first == again
    assert first != other
    all_paths = [p for items in first.values() for p, _ in items]
    assert len(all_paths) == len(set(all_paths)) == len(index.samples)
    for split, expected in (("train", 6), ("val", 3), ("test", 3)):
        per_class = {}
        for _, label in first[split]:
            per_class[label] = per_class.get(label, 0) + 1
        assert per_class == {0: expected, 1: expected, 2: expected}


def test_split_counts_give_each_split_at_least_one():
    assert split_counts(5, 0.15, 0.15) == (3, 1, 1)
    assert split_counts(100, 0.15, 0.15) == (70, 15, 15)
    assert split_counts(10, 0.2, 0.0) == (8, 2, 0)


def test_class_with_too_few_images_is_a_clear_error(dataset_copy):
    for path in sorted((dataset_copy / "Gato").iterdir())[3:]:
        path.unlink()
    with pytest.raises(UserError, match="class 'Gato' has only 3 images: at least 4"):
        stratified_split(scan_dataset(dataset_copy), 0.15, 0.15, seed=1)


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("empty", "no images found"),
    ("one_class", "only 1 class"),
])
def test_unusable_data_paths(tmp_path, tiny_dataset, layout, message):
    import shutil

    root = tmp_path / "data"
    if layout == "empty":
        (root / "Gato").mkdir(parents=True)
    elif layout == "one_class":
        shutil.copytree(tiny_dataset / "Gato", root / "Gato")
    with pytest.raises(UserError, match=message):
        scan_dataset(root)


def test_a_class_named_like_none_of_the_species_is_warned_about(dataset_copy, caplog):
    """Issue 33: a folder "unknown" (or Otros...) trains a class, and "unknown" is also the
    word the tool answers for a photo of none of the classes: training says so."""
    (dataset_copy / "Perro").rename(dataset_copy / "unknown")
    with caplog.at_level("WARNING"):
        index = scan_dataset(dataset_copy)
    assert "unknown" in index.class_names
    assert "class 'unknown' looks like photos of none of the species" in caplog.text
    assert "the word the tool answers" in caplog.text and "--unknown_dir" in caplog.text
