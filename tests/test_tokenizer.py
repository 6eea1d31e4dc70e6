"""CLIP BPE tokenizer: exact official ids, round trips, truncation, properties."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmprompt.clip.tokenizer import Tokenizer, bytes_to_unicode, clean_text, get_tokenizer

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return get_tokenizer()


def test_reference_tokens_exact(tok: Tokenizer) -> None:
    texts = json.loads((DATA / "official_reference.json").read_text())["texts"]
    with np.load(DATA / "official_reference.npz") as ref:
        expected = torch.from_numpy(ref["clip/tokens"])
    out = tok(texts)
    assert out.dtype == torch.long
    assert out.shape == expected.shape == (len(texts), 77)
    assert torch.equal(out, expected)


# Ids of OpenAI's tokenizer for a few more texts (multi-merge words, digits, contractions, punctuation,
# accents, emoji, odd whitespace), as published by other CLIP tokenizer ports.
KNOWN_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "Hello World": [3306, 1002],
    "  hello\t world\n": [3306, 1002],
    "a beautiful landscape, digital art, trending on artstation": [
        320, 1215, 5727, 267, 2794, 794, 267, 6087, 525, 1486, 2631,
    ],
    "portrait of a woman, highly detailed, 8k, photorealistic": [
        5352, 539, 320, 2308, 267, 5302, 12609, 267, 279, 330, 267, 1153, 16157,
    ],
    "A cyberpunk street at night, neon lights!": [320, 36896, 2012, 536, 930, 267, 13919, 3073, 256],
    "the brown fox jumps over the lazy dog": [518, 2866, 3240, 18911, 962, 518, 10753, 1929],
    "hello123world": [3306, 272, 273, 274, 1002],
    "version 2.0": [3273, 273, 269, 271],
    "50% off": [276, 271, 260, 1007],
    "don't won't can't": [847, 713, 1749, 713, 753, 713],
    "it's a test": [585, 568, 320, 1628],
    "What? Why! How...": [768, 286, 1182, 256, 829, 678],
    "test@email.com": [1628, 287, 4462, 269, 2464],
    "caf\u00e9 r\u00e9sum\u00e9 na\u00efve": [15304, 29106, 7054, 4166, 1097, 35689, 563],
    "emoji \U0001f3a8": [16327, 13461],
}  # fmt: skip


@pytest.mark.parametrize("text", list(KNOWN_IDS))
def test_known_ids(tok: Tokenizer, text: str) -> None:
    assert tok.encode(text) == KNOWN_IDS[text]


def test_vocabulary_and_special_tokens(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49408
    assert tok.sot_token == 49406
    assert tok.eot_token == 49407
    assert tok.decode([tok.sot_token, tok.eot_token]) == "<|startoftext|><|endoftext|>"
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(not c.isspace() and c.isprintable() for c in table.values())
    # as in the official tokenizer, the literal special strings map to the special ids
    assert tok.encode("<|endoftext|>") == [tok.eot_token]


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer()


def test_cleaning() -> None:
    assert clean_text("  A\tPhoto \n of &amp;amp; a DOG  ") == "a photo of & a dog"
    assert clean_text("caf\u00c3\u00a9") == "caf\u00e9"  # ftfy repairs mojibake


def test_round_trip(tok: Tokenizer) -> None:
    assert tok.decode(tok.encode("A photo of a   Dog")) == "a photo of a dog "
    assert tok.decode(tok.encode("a photo of a dog.")) == "a photo of a dog . "
    row = tok("caf\u00e9 \U0001f3a8 tiramisu")[0]
    n = int(row.argmax())  # EOT position
    assert tok.decode(row[1:n]) == "caf\u00e9 \U0001f3a8 tiramisu "


def test_call_layout(tok: Tokenizer) -> None:
    out = tok("a dog", context_length=8)
    assert out.tolist() == [[49406, 320, 1929, 49407, 0, 0, 0, 0]]
    assert tok([]).shape == (0, 77)
    with pytest.raises(ValueError):
        tok("a", context_length=1)


def test_too_long_raises_unless_truncate(tok: Tokenizer) -> None:
    text = " ".join(["dog"] * 80)
    with pytest.raises(ValueError, match=r"82 tokens.*context length 77"):
        tok(["a cat", text])
    out = tok(["a cat", text], truncate=True)
    assert out.shape == (2, 77)
    assert out[1, 0] == tok.sot_token and out[1, -1] == tok.eot_token
    assert (out[1, 1:-1] == 1929).all()
    exact = " ".join(["dog"] * 75)  # 75 + SOT + EOT == 77 fits
    assert tok(exact)[0, -1] == tok.eot_token


def test_pickle_round_trip(tok: Tokenizer) -> None:
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("a photo of tiramisu") == tok.encode("a photo of tiramisu")


_WS = regex.compile(r"\s")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))
def test_any_text_encodes_and_decodes(text: str) -> None:
    tok = get_tokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    # decoding gives back every non-space character of the cleaned text, in order
    assert _WS.sub("", tok.decode(ids)) == _WS.sub("", clean_text(text))
    out = tok(text, truncate=True)
    assert out.shape == (1, 77) and int(out.max()) < tok.vocab_size


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ", min_size=1, max_size=12), max_size=6))
def test_words_round_trip_exactly(words: list[str]) -> None:
    tok = get_tokenizer()
    text = "  ".join(words)
    expected = "".join(w.lower() + " " for w in words)
    assert tok.decode(tok.encode(text)) == expected
