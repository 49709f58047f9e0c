"""A word-level tokenizer for the demo CLIP.

The demo world has a vocabulary of about a hundred words, so a 49,408-entry BPE embedding table would dwarf the
tiny model. Token ids follow open_clip's conventions: 0 pads, and the end-of-text token has the largest id, because
open_clip pools the text features at the argmax token.
"""
from __future__ import annotations

import re

import torch

from src.demo import world

CONTEXT_LENGTH = 24
_EXTRA_WORDS = """a an the of photo on in at and with object objects shape shapes pattern texture background
number digit arrow pointing scene something picture""".split()


def _words() -> list[str]:
    phrases = (world.SHAPES + world.COLORS + world.TEXTURES + world.DIRECTIONS + world.DIGITS + world.SCENES
               + world.POSITIONS + world.COUNTS + world.SIZES + _EXTRA_WORDS)
    return sorted({w for p in phrases for w in p.split()})


VOCAB = ["<pad>", "<unk>", "<start>"] + _words() + ["<end>"]
_IDS = {w: i for i, w in enumerate(VOCAB)}


class DemoTokenizer:
    """Callable like open_clip's tokenizers: list of strings -> LongTensor [n, context_length]."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
            ids = [_IDS["<start>"]] + [_IDS.get(w, _IDS["<unk>"]) for w in words][: length - 2] + [_IDS["<end>"]]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
