"""CLIP's byte-level BPE tokenizer, producing exactly the token ids of OpenAI's ``clip.tokenize``.

The algorithm is the known one: every UTF-8 byte is mapped to a printable unicode character
(:func:`bytes_to_unicode`), text is cleaned (ftfy, html unescape, whitespace collapse, lower-case),
split with CLIP's regex, and each piece is merged with the ranked BPE merges of
``bpe_simple_vocab_16e6.txt.gz``. The last character of every piece carries the ``</w>`` suffix.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import logging
import string
from collections.abc import Sequence
from os import PathLike
from typing import Any

import ftfy
import regex
import torch

from ..checks import excerpt

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "TEXT_CLEANING",
    "Tokenizer",
    "bytes_to_unicode",
    "clean_text",
    "default_bpe_path",
    "get_tokenizer",
]

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 77
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_SOT = "<|startoftext|>"
_EOT = "<|endoftext|>"
# The vocabulary has 49408 entries: 2 * 256 byte symbols, this many merges, and the two special tokens.
_NUM_MERGES = 49152 - 256 - 2
# OpenAI's pre-tokenisation pattern (special tokens, English contractions, letter runs, single digits,
# runs of anything else that is not whitespace).
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_BPE_CACHE_SIZE = 1 << 16


_CUT = "shorten the class name (or template) it comes from"

def default_bpe_path() -> str:
    """Path of the BPE vocabulary shipped as package data (``mmprompt/assets``)."""
    return str(importlib.resources.files("mmprompt").joinpath("assets", _VOCAB_FILE))


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character (GPT-2 / CLIP table).

    Printable latin-1 bytes map to themselves; the others map to ``chr(256 + n)`` in byte order,
    so that BPE never sees whitespace or control characters.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + n)
            n += 1
    return dict(zip(byte_values, (chr(c) for c in code_points), strict=True))


TEXT_CLEANING: tuple[str, ...] = ("lower", "whitespace", "canonicalize", "none")
"""How a text is cleaned before tokenization (open_clip's ``tokenizer_kwargs.clean``): ``lower`` is CLIP's
(ftfy fix, html unescape twice, whitespace collapsed, lower-case), ``whitespace`` the same without lower-casing
(open_clip's default for Hugging Face tokenizers), ``canonicalize`` SigLIP's (also ``_`` as a space and ASCII
punctuation removed), ``none`` the text as given (what a Hugging Face ``transformers`` tokenizer does)."""
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_text(text: str, mode: str = "lower") -> str:
    """``text`` cleaned with one of :data:`TEXT_CLEANING` (default: CLIP's)."""
    if mode == "none":
        return text
    if mode not in TEXT_CLEANING:
        raise ValueError(f"unknown text cleaning {mode!r}; expected one of {', '.join(TEXT_CLEANING)}")
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    text = _WHITESPACE.sub(" ", text).strip()
    return text.lower() if mode == "lower" else text


def _word_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    """Adjacent symbol pairs of a word."""
    return set(zip(word[:-1], word[1:], strict=True))


def _read_merges(path: str | PathLike[str]) -> list[tuple[str, str]]:
    """The first ``_NUM_MERGES`` merge rules of a CLIP vocabulary file (header line skipped)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {_NUM_MERGES} merge lines of two symbols after the header")
    return merges  # type: ignore[return-value]


class Tokenizer:
    """CLIP byte-level BPE tokenizer (49408 tokens, SOT 49406, EOT 49407).

    ``tokenizer(texts)`` returns the ``[N, context_length]`` int64 tensor of OpenAI's ``clip.tokenize``;
    :meth:`encode` / :meth:`decode` work on the bare ids (no SOT / EOT). As in the official
    tokenizer, the literal strings ``<|startoftext|>`` and ``<|endoftext|>`` in a text encode to the
    special tokens.
    """

    def __init__(self, bpe_path: str | PathLike[str] | None = None, clean: str = "lower") -> None:
        clean_text("", clean)  # an unknown mode fails here, not at the first text
        self.clean = clean
        """The text cleaning (:data:`TEXT_CLEANING`; CLIP's ``lower`` unless a checkpoint's config says otherwise)."""
        self.bpe_path = str(bpe_path) if bpe_path is not None else default_bpe_path()
        merges = _read_merges(self.bpe_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_SOT, _EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        if len(self.encoder) != len(vocab):
            raise ValueError(f"{self.bpe_path}: vocabulary has duplicate entries")
        self.bpe_ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self._bpe_cached = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe)
        logger.debug("loaded CLIP BPE vocabulary (%d tokens) from %s", len(vocab), self.bpe_path)

    # The per-instance cache wraps a bound method, which does not pickle: rebuild it on unpickling.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_bpe_cached"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bpe_cached = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bpe_path={self.bpe_path!r}, vocab_size={self.vocab_size}, clean={self.clean!r})"

    @property
    def sot_token(self) -> int:
        """Id of ``<|startoftext|>`` (49406)."""
        return self.encoder[_SOT]

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>`` (49407)."""
        return self.encoder[_EOT]

    @property
    def vocab_size(self) -> int:
        """Number of tokens (49408)."""
        return len(self.encoder)

    def _bpe(self, token: str) -> tuple[str, ...]:
        """Apply the ranked merges to one pre-token (already byte-mapped); the last symbol ends in ``</w>``."""
        if token in (_SOT, _EOT):
            return (token,)
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        pairs = _word_pairs(word)
        while pairs:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, _NUM_MERGES))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            pairs = _word_pairs(word)
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` after cleaning, without SOT / EOT."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text, self.clean)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe_cached(mapped))
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids, as the official tokenizer decodes them: every ``</w>`` becomes a space.

        Special tokens decode to their literal strings and padding zeros to ``!``; strip them first
        (e.g. keep the ids between SOT and EOT) to recover the text.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> torch.Tensor:
        """Tokenize texts into a zero-padded ``[N, context_length]`` int64 tensor: SOT, ids, EOT.

        A text whose ids with SOT and EOT exceed ``context_length`` raises ``ValueError``, unless
        ``truncate`` is set: it is then cut to ``context_length`` and its last token set to EOT.
        """
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {context_length}")
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)  # [N, L]
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(
                        f"text {excerpt(text)} has {len(ids)} tokens with SOT and EOT, more than the context "
                        f"length {context_length}: {_CUT}"
                    )
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The shared tokenizer over the packaged vocabulary (loaded once per process)."""
    return Tokenizer()
