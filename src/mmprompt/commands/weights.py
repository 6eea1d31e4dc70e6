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

    print(f"{'name (pass to --clip)':<52} {'family':<16} {'params':>6}  {'source':<12} licence")
    for name, entry in PRETRAINED.items():
        print(f"{name:<52} {'clip (OpenAI)':<16} {_OPENAI_PARAMS.get(name, '?'):>6}  {'openai':<12} MIT "
              f"({entry.url.split('/')[2]})")
    for name, model in HUB_MODELS.items():
        shown = name if model.layout == "open_clip" else f"{PREFIX}{name}"
        print(f"{shown:<52} {model.family:<16} {model.params:>6}  {model.layout:<12} {model.licence}")
    print(f"any other Hub repository: {PREFIX}ORG/NAME[@REVISION] (an open_clip or transformers CLIP/SigLIP layout); "
          "parameter counts are approximate, from the model cards; check each licence before use")
    return 0
