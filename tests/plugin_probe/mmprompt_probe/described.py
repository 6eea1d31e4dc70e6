"""A second example method that reads class descriptions: the probe's CoOp context followed by each class's
first description sentence in place of its bare name (``--descriptions FILE``, see "Class descriptions" in
docs/writing-a-method.md). It shows the extension point, not a research method."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmprompt.descriptions import match_descriptions
from mmprompt.methods import MethodSpec

from . import OFFICIAL_NAMES, Probe, ProbeConfig


@dataclasses.dataclass
class DescribedProbeConfig(ProbeConfig):
    pass


class DescribedProbe(Probe):
    method = "probe_described"
    config: DescribedProbeConfig
    uses_descriptions = True

    @classmethod
    def needs_descriptions(cls, config: object) -> bool:
        return True

    def prepare_classes(self, classnames: list[str]) -> None:
        sentences = match_descriptions(classnames, self.dataset.descriptions,
                                       self.dataset.descriptions_source or "the class descriptions")
        super().prepare_classes([f"{name}: {found[0].rstrip('.')}" for name, found in zip(classnames, sentences,
                                                                                          strict=True)])


SPEC = MethodSpec(
    "probe_described",
    DescribedProbe,
    DescribedProbeConfig,
    presets={"base2novel": Path(__file__).parent / "probe_described_b2n.yaml"},
    official_names=OFFICIAL_NAMES,
    description="example plugin: the probe with each class's first description sentence",
)
