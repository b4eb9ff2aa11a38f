"""The shipped models load, and their cards' held-out metrics are reproduced on freshly generated clips."""

import math

import pytest

from course_lib import pretrained

SHIPPED = pretrained.available()


def test_every_registered_model_is_shipped():
    assert SHIPPED == sorted(pretrained._REGISTRY), "a registered model has no weights in the repository"


@pytest.mark.parametrize("name", SHIPPED)
def test_card_metrics_are_reproduced(name):
    card = pretrained.card(name)
    expected = card["evaluation"]["metrics"]
    measured = pretrained.measure(name)
    tolerance = card["evaluation"]["relative_tolerance"]
    assert set(measured) == set(expected)
    for key, value in expected.items():
        assert math.isclose(measured[key], value, rel_tol=tolerance, abs_tol=1e-3), (
            f"{name}: {key} measured {measured[key]}, card says {value}")
    assert card["training"]["steps"] and card["training"]["command"].startswith("python -m course_lib.")


@pytest.mark.parametrize("name", SHIPPED)
def test_loaded_model_is_in_eval_mode_with_the_card_parameter_count(name):
    model = pretrained.load(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pretrained.card(name)["parameters"]


def test_unknown_name_lists_what_exists():
    with pytest.raises(KeyError, match="available"):
        pretrained.load("no_such_model")


def test_half_precision_weights_load_into_a_float32_model_and_halve_the_file(tmp_path):
    import torch

    from course_lib.codecs.codec import Codec, CodecConfig
    from course_lib.pretrained.publish import to_half_precision

    torch.manual_seed(0)
    model = Codec(CodecConfig(n_filters=2, dimension=8, lstm=1, n_q=2, codebook_size=16)).eval()
    folder = model.save_pretrained(tmp_path / "codec")
    size = (folder / "model.safetensors").stat().st_size
    to_half_precision(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size < 0.6 * size
    loaded = Codec.from_pretrained(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), rtol=2 ** -10, atol=1e-6), name  # float16 rounding only
