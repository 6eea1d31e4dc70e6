"""A tokenizer read from a checkpoint's ``tokenizer.json`` with the ``tokenizers`` library (SigLIP, MetaCLIP 2).

It has the interface of :class:`mmprompt.clip.tokenizer.Tokenizer`: ``tokenizer(texts, context_length)``
gives right-padded ``[N, context_length]`` ids (the special tokens the file's post-processor adds, then
the pad id), ``encode`` gives the bare ids of a text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checks import excerpt
from .tokenizer import clean_text

__all__ = ["HFTokenizer"]

logger = logging.getLogger(__name__)


_CUT = "shorten the class name (or template) it comes from"

class HFTokenizer:
    """The tokenizer of ``tokenizer.json``; ``pad_id``: the id padding is filled with; ``clean``: how texts are
    cleaned first (:data:`~mmprompt.clip.tokenizer.TEXT_CLEANING`; ``none`` as in ``transformers``, an open_clip
    config states its own, e.g. SigLIP's ``canonicalize``)."""

    def __init__(self, path: str | Path, pad_id: int, clean: str = "none") -> None:
        from tokenizers import Tokenizer as _Tokenizer

        clean_text("", clean)  # an unknown mode fails here
        self.clean = clean

        self.path = Path(path)
        try:
            self._tok = _Tokenizer.from_file(str(self.path))
        except Exception as exc:  # the library raises its own exception type
            raise ValueError(f"{self.path}: not a tokenizers tokenizer.json ({exc})") from exc
        self._tok.no_padding()
        self._tok.no_truncation()
        self.pad_id = int(pad_id)
        probe = self._tok.encode("a")
        self.has_start_token = bool(probe.special_tokens_mask and probe.special_tokens_mask[0])
        """The post-processor puts a special token first (learned prompts then go after it)."""

    @classmethod
    def from_folder(cls, tokenizer_file: Path, fallback_pad_id: int | None, clean: str = "none") -> HFTokenizer:
        """The tokenizer of ``tokenizer.json``, padding with the pad token of ``tokenizer_config.json`` (or
        ``special_tokens_map.json``) beside it, else ``fallback_pad_id`` (the model config's)."""
        from tokenizers import Tokenizer as _Tokenizer

        pad_id = fallback_pad_id
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            side = tokenizer_file.with_name(name)
            if side.is_file():
                pad = json.loads(side.read_text(encoding="utf-8")).get("pad_token")
                pad = pad.get("content") if isinstance(pad, dict) else pad
                if isinstance(pad, str):
                    found = _Tokenizer.from_file(str(tokenizer_file)).token_to_id(pad)
                    if found is not None:
                        pad_id = found
                        break
        if pad_id is None:
            raise ValueError(f"{tokenizer_file}: no pad token in tokenizer_config.json / special_tokens_map.json "
                             "and none in the model config")
        return cls(tokenizer_file, pad_id, clean)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
                f"clean={self.clean!r})")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._tok.encode(clean_text(text, self.clean), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return self._tok.decode([int(i) for i in ids])

    def __call__(self, texts: str | Sequence[str], context_length: int, truncate: bool = False) -> torch.Tensor:
        """Ids ``[N, context_length]``: each text with its special tokens, right-padded with ``pad_id``.

        A text longer than ``context_length`` raises ``ValueError`` unless ``truncate`` (then it is cut as
        the library truncates, keeping the special tokens).
        """
        if isinstance(texts, str):
            texts = [texts]
        result = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            text = clean_text(text, self.clean)
            ids = self._tok.encode(text).ids
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"text {excerpt(text)} has {len(ids)} tokens, more than the context length "
                                     f"{context_length}: {_CUT}")
                self._tok.enable_truncation(context_length)
                try:
                    ids = self._tok.encode(text).ids
                finally:
                    self._tok.no_truncation()
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result
