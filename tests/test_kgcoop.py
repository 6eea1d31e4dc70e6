"""KgCoOp beyond its reference file: the teacher follows the dataset, is computed once per class list, and
the objective is CE + W * kg (its parity with the official code is in test_parity.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmprompt.clip.model import CLIP
from mmprompt.methods import DatasetContext, config_from_official, create_learner

NAMES = ["sea_or_lake", "Forest", "dog"]
EUROSAT = DatasetContext("eurosat", "a centered satellite photo of {}.")


def frozen_features(clip: CLIP, learner, template: str) -> torch.Tensor:  # noqa: ANN001
    tokens = learner.tokenize([template.format(n.replace("_", " ")) for n in NAMES])
    with torch.no_grad():
        return F.normalize(clip.encode_text(tokens).float(), dim=-1)


def test_teacher_is_the_datasets_template_and_follows_a_new_dataset(clip: CLIP) -> None:
    learner = create_learner("kgcoop", clip, NAMES, dataset=EUROSAT)
    torch.testing.assert_close(learner.teacher_text_features([learner.teacher_template()]),
                               frozen_features(clip, learner, EUROSAT.template))
    learner.set_classnames(NAMES, dataset=DatasetContext("imagenet", "a photo of a {}."))
    assert learner.teacher_template() == "a photo of a {}."
    torch.testing.assert_close(learner.teacher_text_features([learner.teacher_template()]),
                               frozen_features(clip, learner, "a photo of a {}."))


def test_teacher_is_encoded_once_per_class_list(clip: CLIP, monkeypatch: pytest.MonkeyPatch) -> None:
    learner = create_learner("kgcoop", clip, NAMES, dataset=EUROSAT)
    calls = []
    original = clip.encode_text
    monkeypatch.setattr(clip, "encode_text", lambda tokens, **kw: calls.append(len(tokens)) or original(tokens, **kw))
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    first = learner(images, labels)
    second = learner(images, labels)
    assert calls == [len(NAMES)]  # the frozen features of the one template, once
    torch.testing.assert_close(first.total, second.total)
    learner.set_classnames(["cat", "dog"], dataset=EUROSAT)
    learner(images, torch.tensor([0, 1]))
    assert calls == [len(NAMES), 2]


def test_objective_is_ce_plus_weighted_kg(clip: CLIP) -> None:
    learner = create_learner("kgcoop", clip, NAMES, {"weight": 3.0}, dataset=EUROSAT).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    objective = learner(images, labels)
    assert set(objective.terms) == {"ce", "kg"}
    torch.testing.assert_close(objective.total, objective.terms["ce"] + 3.0 * objective.terms["kg"])
    torch.testing.assert_close(objective.terms["ce"], F.cross_entropy(learner.eval()(images), labels))
    assert 0.0 <= float(objective.terms["kg"].detach()) <= 2.0


def test_official_config_quirks() -> None:
    truthy = config_from_official("kgcoop", {"N_CTX": 16, "CTX_INIT": True, "W": 8.0, "CLASS_TOKEN_POSITION": "middle"})
    assert (truthy.n_ctx, truthy.ctx_init, truthy.weight, truthy.class_token_position) == (4, "a photo of a", 8.0, "end")
    falsy = config_from_official("kgcoop", {"N_CTX": 16, "CTX_INIT": False})
    assert (falsy.n_ctx, falsy.ctx_init) == (16, "")
    with pytest.raises(ValueError, match="not understood"):
        config_from_official("kgcoop", {"N_CTXX": 4})
