"""How fast a loaded model answers: batch-1 latency, throughput, and the device it runs on."""

from __future__ import annotations

import numpy as np

from pokedex_trainer.evaluation.predict import Predictor


def call_times(call, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``call()`` after ``warmup`` untimed ones."""
    import time

    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def measure_latency(predictor: Predictor, image: np.ndarray, warmup: int = 3,
                    runs: int = 20) -> dict:
    """Batch-1 milliseconds per image: median and 95th percentile after ``warmup`` calls."""
    batch = image[None]
    times = predictor.timed_calls(batch, warmup, runs)  # a runtime in a child process
    if times is None:
        times = call_times(lambda: predictor.predict(batch), warmup, runs)
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "runs": runs}


def measure_throughput(predictor: Predictor, images: np.ndarray, repeats: int = 3) -> float:
    """Images per second at the batch size of ``images`` (one warm-up call first)."""
    import time

    predictor.predict(images)
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.predict(images)
    return len(images) * repeats / (time.perf_counter() - start)


def device_of(predictor: Predictor) -> str:
    if predictor.runtime == "keras":  # the Keras backend the model was loaded on
        import keras

        backend = keras.backend.backend()
        if backend == "torch":
            import torch

            return f"GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() \
                else "CPU"
        if backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            return f"GPU ({gpus[0]})" if gpus else "CPU"
    if predictor.runtime in ("keras", "tf.saved_model"):
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return f"GPU ({gpus[0].name})" if gpus else "CPU"
    if predictor.runtime in ("pytorch", "torchscript", "torch.export"):
        return "CPU"  # the predictors run PyTorch files on the CPU
    if predictor.runtime == "onnxruntime":
        return "CPU (" + ", ".join(predictor.providers) + ")"
    return "CPU"


def latency(predictor: Predictor, images: np.ndarray, runs: int, batch: int) -> dict:
    """Batch-1 milliseconds (median, p95) and images/s at ``batch``."""
    single = measure_latency(predictor, images[0], warmup=3, runs=runs)
    tiled = np.resize(images, (batch, *images.shape[1:]))
    return {"batch1_median_ms": single["median_ms"], "batch1_p95_ms": single["p95_ms"],
            "runs": runs, "throughput_batch": batch,
            "throughput_images_per_s": measure_throughput(predictor, tiled, repeats=2),
            "runtime": predictor.runtime, "device": device_of(predictor),
            "threads": predictor.threads}
