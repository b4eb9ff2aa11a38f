"""The shipped models load, and their cards' held-out metrics are reproduced on freshly generated clips.

A card is reproduced within the tolerance it states (:func:`course_lib.pretrained.metric_tolerance`): float
rounding for continuous metrics, and for prompt-adherence rates a fixed number of prompts, because another
CPU's float order can turn one sampled token and with it one generated clip. The same comparison must fail
for a damaged model, or the tolerance would hide what it is there to catch.
"""

import pytest
import torch

from course_lib import pretrained
from course_lib.pretrained.measures import prompt_clips, rate_counts

SHIPPED = pretrained.available()


def test_every_registered_model_is_shipped():
    assert SHIPPED == sorted(pretrained._REGISTRY), "a registered model has no weights in the repository"


@pytest.mark.float_path
@pytest.mark.parametrize("name", SHIPPED)
def test_card_metrics_are_reproduced(name):
    card = pretrained.card(name)
    assert pretrained.compare_with_card(name, pretrained.measure(name)) == []
    assert card["training"]["steps"] and card["training"]["command"].startswith("python -m course_lib.")


@pytest.mark.parametrize("name", SHIPPED)
def test_card_states_its_tolerance_and_counts_its_prompts(name):
    """Rates over prompts list how many prompts they are over, and the count is the prompts' own (no audio
    decides it); one flip of such a rate is a whole multiple of 1/n, which the card values must be too."""
    evaluation = pretrained.card(name)["evaluation"]
    assert 0 < evaluation["relative_tolerance"] <= 0.02 and "tolerance" in evaluation
    counts = rate_counts(evaluation["metrics"], prompt_clips(name, evaluation["settings"]))
    assert evaluation.get("rate_counts", {}) == counts
    if counts:
        assert evaluation["rate_flips"] in (1, 2)
    for key, n in counts.items():
        hits = evaluation["metrics"][key] * n
        assert abs(hits - round(hits)) < 1e-3 * n, f"{key} = {evaluation['metrics'][key]} is not a share of {n}"
        # the tolerance admits the stated flips and less than a quarter of the prompts
        assert evaluation["rate_flips"] / n <= pretrained.metric_tolerance(evaluation, key) < 0.25


def _damaged(model: torch.nn.Module) -> torch.nn.Module:
    """The model with the values inside every weight matrix and kernel shuffled: each layer keeps its values and
    their statistics, none keeps what it learnt. (One shuffled layer is not always damage a card can see: a
    residual branch, or a discriminator the measure never runs.)"""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() >= 2:
                weight.copy_(weight.flatten()[torch.randperm(weight.numel(), generator=generator)].view_as(weight))
    return model


@pytest.mark.parametrize("name", SHIPPED)
def test_a_damaged_model_fails_its_card(name):
    problems = pretrained.compare_with_card(name, pretrained.measure(name, model=_damaged(pretrained.load(name))))
    assert problems, f"{name}: a model with its weights shuffled still reproduces the card"


def test_tolerance_of_a_rate_is_its_flips_and_of_the_rest_relative():
    evaluation = {"metrics": {"class_accuracy": 0.5, "mel_db": 10.0, "tiny": 0.0001}, "relative_tolerance": 0.02,
                  "rate_counts": {"class_accuracy": 24}, "rate_flips": 2}
    assert pretrained.metric_tolerance(evaluation, "class_accuracy") == pytest.approx(2 / 24 + 1e-4)
    assert pretrained.metric_tolerance(evaluation, "mel_db") == pytest.approx(0.2)
    assert pretrained.metric_tolerance(evaluation, "tiny") == pytest.approx(1e-3)


@pytest.mark.parametrize("name", SHIPPED)
def test_loaded_model_is_in_eval_mode_with_the_card_parameter_count(name):
    model = pretrained.load(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pretrained.card(name)["parameters"]


def test_unknown_name_lists_what_exists():
    with pytest.raises(KeyError, match="available"):
        pretrained.load("no_such_model")


def test_half_precision_weights_load_into_a_float32_model_and_halve_the_file(tmp_path):
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
