"""Worker processes (spawn included) feed exactly what the in-process loader does."""

import os

import numpy as np

from pokedex_trainer.data.scan import scan_dataset
from pokedex_trainer.data.feeding import BatchLoader, BatchSource


def _loader(index, workers, training=True, start_method="spawn", batch_size=5):
    source = BatchSource(index.root, index.samples, (32, 32), training=training, seed=3)
    return BatchLoader(source, batch_size, shuffle=True, workers=workers, seed=3,
                       start_method=start_method)


def own_segments() -> list[str]:
    """This process's shared-memory segments (the ring's and a ram cache's)."""
    from pokedex_trainer.data.shared_batches import NAME_PREFIX

    return sorted(name for name in os.listdir("/dev/shm")
                  if name.startswith(f"{NAME_PREFIX}{os.getpid()}_"))


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
        # In place: each batch is read from its shared-memory buffer before the next one.
        in_place = [(batch.images.copy(), batch.images.base is not None)
                    for batch in multi.iter_epoch(0, in_place=True)]
        assert all(shared for _, shared in in_place)
        expected = list(single.iter_epoch(0))
        assert all(np.array_equal(x, y.images) for (x, _), y in zip(in_place, expected))
        if os.path.isdir("/dev/shm"):
            assert len(own_segments()) == 2 * 2 + 1  # workers x prefetch + the one being read
    finally:
        multi.close()
    if os.path.isdir("/dev/shm"):
        assert own_segments() == []


def test_without_room_in_shared_memory_batches_are_pickled_with_a_warning(tiny_dataset,
                                                                          monkeypatch, caplog):
    from pokedex_trainer.data import shared_batches

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shared_batches, "allocate_shared", full)
    index = scan_dataset(tiny_dataset)
    multi = _loader(index, 1)
    try:
        with caplog.at_level("WARNING"):
            batches = list(multi.iter_epoch(1, in_place=True))
        expected = list(_loader(index, 0).iter_epoch(1))
        assert all(np.array_equal(x.images, y.images) for x, y in zip(batches, expected))
        assert "no room in shared memory" in caplog.text and "--shm-size" in caplog.text
    finally:
        multi.close()


def test_a_batch_written_into_a_given_buffer_is_a_view_of_it(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    source = BatchSource(index.root, index.samples, (32, 32), training=True, seed=3)
    out = np.zeros((6, 32, 32, 3), np.uint8)
    batch = source.load_batch([0, 1, 2, 3], epoch=1, batch_number=2, out=out)
    assert batch.images.base is out and batch.images.shape[0] == 4
    assert np.array_equal(out[:4], source.load_batch([0, 1, 2, 3], 1, 2).images)
    assert not out[4:].any()


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
