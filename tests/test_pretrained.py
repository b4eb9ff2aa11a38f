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
    assert card["training"]["steps"] and card["training"]["command"].startswith("python -m course_lib.train")


@pytest.mark.parametrize("name", SHIPPED)
def test_loaded_model_is_in_eval_mode_with_the_card_parameter_count(name):
    model = pretrained.load(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pretrained.card(name)["parameters"]


def test_unknown_name_lists_what_exists():
    with pytest.raises(KeyError, match="available"):
        pretrained.load("no_such_model")
