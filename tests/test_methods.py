"""Method semantics beyond the reference file: parameter counts, configs, prompt placement."""

from __future__ import annotations

import pytest
import torch

from mmprompt.clip.config import get_config
from mmprompt.clip.model import CLIP
from mmprompt.methods import create_learner, get_method, is_trainable, list_methods, make_config


@pytest.fixture(scope="module")
def vit_b16() -> CLIP:
    """ViT-B/16 built from its architecture config (uninitialised memory: only shapes matter here)."""
    with torch.device("meta"):
        model = CLIP(get_config("ViT-B/16"))
    return model.to_empty(device="cpu")


@pytest.fixture(scope="module")
def tiny() -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_config("tiny")).eval()


# SPEC section 2: trainable parameter counts for ViT-B/16.
@pytest.mark.parametrize(
    "method,config,expected",
    [
        ("maple", {"n_ctx": 2, "depth": 9}, 3_555_072),
        ("maple", {"n_ctx": 2, "depth": 3}, 1_185_024),
        ("ivlp", {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 12, "depth_vision": 12}, 30_720),
        ("vpt", {"n_ctx_vision": 8, "depth_vision": 12}, 73_728),
        ("cocoop", {"n_ctx": 4, "ctx_init": "a photo of a"}, 35_360),
        ("coop", {"n_ctx": 16}, 8_192),
    ],
)
def test_vit_b16_trainable_counts(vit_b16: CLIP, method: str, config: dict, expected: int) -> None:
    learner = create_learner(method, vit_b16, ["cat", "dog"], config)
    assert sum(p.numel() for p in learner.trainable_parameters()) == expected
    # one predicate: what requires grad is exactly what the predicate selects
    assert {n for n, p in learner.named_parameters() if p.requires_grad} == {
        n for n, _ in learner.named_parameters() if is_trainable(n)
    }
    assert not any(p.requires_grad for p in learner.clip.parameters())


def test_depth_beyond_layers_is_a_clear_error(tiny: CLIP) -> None:
    with pytest.raises(ValueError, match="larger than the model's 4 layers"):
        create_learner("maple", tiny, ["a"], {"depth": 5})
    with pytest.raises(ValueError, match="depth_vision = 9"):
        create_learner("vpt", tiny, ["a"], {"depth_vision": 9})
    create_learner("maple", tiny, ["a"], {"depth": 4})  # all layers is fine


def test_configs_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        make_config("maple", {"n_ctxx": 2})
    with pytest.raises(ValueError, match="class_token_position"):
        make_config("coop", {"class_token_position": "left"})
    with pytest.raises(ValueError, match="n_ctx"):
        make_config("maple", {"n_ctx": 0})
    with pytest.raises(KeyError, match="unknown method"):
        get_method("prompt-magic")
    assert make_config("coop", {"ctx_init": "a photo of a"}).n_ctx == 4  # CoOp: n_ctx = words of the init
    from mmprompt.methods.builtin import BUILTIN

    assert list(BUILTIN) == list_methods()[: len(BUILTIN)]  # the table is the one list of methods
    assert all(get_method(alias).name == name for name, spec in BUILTIN.items() for alias in spec.aliases)


@pytest.mark.parametrize(
    "position,template",
    [("end", "red green {}."), ("front", "{} red green."), ("middle", "red {} green.")],
)
def test_coop_class_token_position(tiny: CLIP, position: str, template: str) -> None:
    """With the context set to the embeddings of two words, CoOp's prompt is that text around the name."""
    names = ["dog", "sea lion", "a very long name"]
    learner = create_learner("coop", tiny, names, {"n_ctx": 2, "class_token_position": position})
    with torch.no_grad():
        learner.trainable.ctx.copy_(learner.init_words("red green", 2))
        got = learner.text_features()
        expected = tiny.encode_text(learner.tokenize([template.format(n) for n in names]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_maple_init_keeps_the_rest_of_the_init_text(tiny: CLIP) -> None:
    """n_ctx=2 with "a photo of a": the input is [SOT] [V1] [V2] of a {class}. [EOT]."""
    learner = create_learner("maple", tiny, ["dog"], {"n_ctx": 2, "depth": 1})
    with torch.no_grad():
        got = learner.text_features()
        expected = tiny.encode_text(learner.tokenize(["a photo of a dog."]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the deeper coupling layers start as copies of one layer; the first one is separate
    deep = create_learner("maple", tiny, ["dog"], {"depth": 3}).trainable
    assert torch.equal(deep.deep_proj[0].weight, deep.deep_proj[1].weight)
    assert not torch.equal(deep.proj.weight[:, : deep.deep_proj[0].weight.shape[1]], deep.deep_proj[0].weight)


def test_zeroshot_ensemble_averages_normalised_features(tiny: CLIP) -> None:
    templates = ["a photo of a {}.", "art of the {}."]
    ens = create_learner("zeroshot", tiny, ["dog", "cat"], {"templates": templates})
    singles = [create_learner("zeroshot", tiny, ["dog", "cat"], {"templates": [t]}).text_features() for t in templates]
    mean = torch.nn.functional.normalize((singles[0] + singles[1]) / 2, dim=-1)
    torch.testing.assert_close(ens.text_features(), mean)
    assert ens.trainable_parameters() == []


def test_any_clip_width(tiny: CLIP) -> None:
    """Widths come from the model: a CLIP whose towers differ in width works for every method."""
    images = torch.randn(2, 3, 32, 32)
    for method, cfg in [("maple", {"depth": 2}), ("ivlp", {"depth_text": 2, "depth_vision": 2}),
                        ("vpt", {"depth_vision": 2}), ("language_only", {"depth_text": 2}),
                        ("coop", {"n_ctx": 3}), ("cocoop", {})]:
        learner = create_learner(method, tiny, ["a", "b", "c"], cfg)
        loss = torch.nn.functional.cross_entropy(learner(images), torch.tensor([0, 2]))
        loss.backward()
        assert all(p.grad is not None for p in learner.trainable_parameters()), method


def test_zeroshot_ensemble_is_coops_seven_plus_the_dataset_template(tiny: CLIP) -> None:
    from mmprompt.methods.zeroshot import IMAGENET_TEMPLATES_SELECT

    dtd = create_learner("zeroshot", tiny, ["dog"], {"templates": ["{} texture."], "ensemble": True})
    assert dtd.templates() == [*IMAGENET_TEMPLATES_SELECT, "{} texture."]
    imagenet = create_learner("zeroshot", tiny, ["dog"], {"templates": [], "ensemble": True})
    assert imagenet.templates() == list(IMAGENET_TEMPLATES_SELECT) and len(imagenet.templates()) == 7
    with pytest.raises(ValueError, match="at least one template"):
        create_learner("zeroshot", tiny, ["dog"], {"templates": []})
