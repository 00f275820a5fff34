"""TensorBoard's layer activations: the chosen backbone stages, the same tags in both
frameworks."""

import numpy as np
import pytest

from conftest import tensorboard_tags
from pokedex_trainer.core.tensorboard import activation_tag


def _histogram_steps(log_dir, tag) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir / "train"), size_guidance={"tensors": 0,
                                                                    "histograms": 0}).Reload()
    found = events.Tags()
    if tag in found.get("histograms", []):
        return [event.step for event in events.Histograms(tag)]
    return [event.step for event in events.Tensors(tag)]


def test_both_frameworks_write_the_same_activation_tags_every_epoch(keras_run, torch_run,
                                                                     shared_runs):
    expected = {activation_tag(1), activation_tag(2)}  # the tiny networks have two stages
    for run in (keras_run, torch_run):
        log_dir = shared_runs / "tb" / run.name
        tags = tensorboard_tags(log_dir)["train"]
        assert {t for t in tags if t.startswith("activations/")} == expected, run.name
        for tag in expected:
            assert _histogram_steps(log_dir, tag) == [0, 1, 2, 3]  # --histogram_freq 1


def test_keras_probe_gives_the_stage_outputs_of_the_normalized_images():
    import keras

    from pokedex_trainer.backends.keras import keras_networks as models
    from pokedex_trainer.networks import TEST_MODEL_SPECS

    model = models.build_model(TEST_MODEL_SPECS["tiny_keras"], 3, (32, 32), "none", 0.3)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    first, last = models.activation_probe(model, "tiny_keras")(images)
    backbone = model.get_layer(models.BACKBONE_NAME)
    expected = backbone(keras.ops.convert_to_tensor(images / 127.5 - 1.0, "float32"),
                        training=False)
    assert first.shape == (4, 16, 16, 8) and first.min() >= 0  # relu1, stride 2
    np.testing.assert_allclose(last, keras.ops.convert_to_numpy(expected), atol=1e-5)
    assert models.activation_probe(model, "no_such_network") is None


def test_torch_stage_outputs_leave_the_training_mode_as_it_was():
    import torch

    from pokedex_trainer.networks import TEST_MODEL_SPECS
    from pokedex_trainer.backends.torch import torch_networks as models

    model = models.build_model(TEST_MODEL_SPECS["tiny_torch"], 3, "none", 0.3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (4, 3, 32, 32)).float()
    first, last = models.stage_activations(model, x, "tiny_torch")
    assert first.shape == (4, 8, 16, 16) and last.shape == (4, 16, 16, 16)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BN update


@pytest.mark.slow
def test_the_real_networks_have_their_four_stages():
    import torch

    from pokedex_trainer.backends.keras import keras_networks as kmodels
    from pokedex_trainer.networks import get_spec
    from pokedex_trainer.backends.torch import torch_networks as tmodels

    for model_type in ("mobilenet", "efficientnet"):
        model = kmodels.build_model(get_spec(model_type), 3, (64, 64), "none", 0.3)
        outputs = kmodels.activation_probe(model, model_type)(np.zeros((1, 64, 64, 3)))
        assert [o.shape[1] for o in outputs] == [16, 8, 4, 2], model_type
    resnet = tmodels.build_model(get_spec("resnet"), 3, "none", 0.3)
    outputs = tmodels.stage_activations(resnet, torch.zeros(1, 3, 64, 64), "resnet")
    assert [o.shape[2] for o in outputs] == [16, 8, 4, 2]


def test_feature_extractor_gives_what_the_classifier_reads(keras_run, torch_run):
    """The guide's transfer-learning snippet done right: the features before the classifier."""
    import keras
    import torch

    from pokedex_trainer.runs.transfer import feature_extractor
    from pokedex_trainer.backends.torch.torch_networks import load_checkpoint

    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    model = keras.models.load_model(keras_run / "tiny_keras_best.keras")
    features = feature_extractor(keras_run / "tiny_keras_best.keras")(images)
    assert tuple(features.shape) == (3, 16)  # one vector per image, not a 4-D feature map
    head = model.get_layer("predictions")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(features)),
                               model.predict(images, verbose=0), atol=1e-5)
    full, _ = load_checkpoint(torch_run / "tiny_torch_best.pth")
    extractor = feature_extractor(torch_run / "tiny_torch_best.pth")
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        vectors = extractor(x)
        assert vectors.shape == (3, 16)
        torch.testing.assert_close(torch.softmax(full.head(vectors), 1), full.probabilities(x))
