"""``mmprompt weights list``: every CLIP known by name, with its family, size and licence.

mmprompt weights list
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the weights known by name (pass one to --clip)")


_OPENAI_PARAMS = {"ViT-B/32": "151M", "ViT-B/16": "150M", "ViT-L/14": "428M", "ViT-L/14@336px": "428M"}


def run(args: argparse.Namespace) -> int:
    from mmprompt.clip.hub import HUB_MODELS, PREFIX
    from mmprompt.clip.weights import PRETRAINED

    print(f"{'name (pass to --clip)':<38} {'family':<16} {'params':>6}  {'layout':<12} {'from':<48} licence")
    for name, entry in PRETRAINED.items():
        print(f"{name:<38} {'clip (OpenAI)':<16} {_OPENAI_PARAMS.get(name, '?'):>6}  {'openai':<12} "
              f"{entry.url.split('/')[2]:<48} MIT")
    for name, model in HUB_MODELS.items():
        shown = f"{PREFIX}{name}" if name == model.repo else name
        print(f"{shown:<38} {model.family:<16} {model.params:>6}  {model.layout:<12} {PREFIX + model.repo:<48} "
              f"{model.licence}")
    print(f"any other Hub repository: {PREFIX}ORG/NAME[@REVISION] (an open_clip or transformers CLIP/SigLIP layout); "
          "parameter counts are approximate, from the model cards; check each licence before use")
    return 0
