"""Worker processes (spawn included) feed exactly what the in-process loader does."""

import numpy as np

from pokedex_trainer.dataset import scan_dataset
from pokedex_trainer.feeding import BatchLoader, BatchSource


def _loader(index, workers, training=True, start_method="spawn", batch_size=5):
    source = BatchSource(index.root, index.samples, (32, 32), training=training, seed=3)
    return BatchLoader(source, batch_size, shuffle=True, workers=workers, seed=3,
                       start_method=start_method)


def test_spawned_workers_give_the_same_batches_as_the_main_process(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    single = _loader(index, 0)
    multi = _loader(index, 2)
    assert multi.start_method == "spawn"  # what Windows uses; safe after a framework started
    try:
        for epoch in range(2):
            a = list(single.iter_epoch(epoch))
            b = list(multi.iter_epoch(epoch))
            assert len(a) == len(b) == len(single) == 8
            for x, y in zip(a, b):
                assert x.images.shape[1:] == (32, 32, 3) and x.images.dtype == np.uint8
                assert np.array_equal(x.images, y.images)
                assert np.array_equal(x.labels, y.labels)
    finally:
        multi.close()


def test_each_epoch_reshuffles_and_covers_every_sample_once(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    loader = _loader(index, 0, training=False)
    first = loader.batch_indices(0)
    second = loader.batch_indices(1)
    assert sorted(sum(first, [])) == list(range(len(index.samples)))
    assert first != second


def test_unreadable_file_is_reported_and_replaced_without_changing_batch_size(dataset_copy,
                                                                              caplog):
    bad = dataset_copy / "Gato" / "Gato_0003.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated download
    index = scan_dataset(dataset_copy)
    loader = _loader(index, 0, training=False, batch_size=36)
    with caplog.at_level("WARNING"):
        batches = list(loader.iter_epoch(0))
    assert batches[0].images.shape[0] == 36
    assert loader.unreadable == {"Gato/Gato_0003.jpg"}
    assert "skipped unreadable image Gato/Gato_0003.jpg" in caplog.text
