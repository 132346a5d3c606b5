"""Deterministic filler text for synthetic prompts (system prompts, chat turns)."""

from __future__ import annotations

import random

# A small fixed vocabulary of common words (written for corral).
_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get "
    "here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three system model request token "
    "cache server answer question number apples train station river garden window market paper"
)
_WORDS = _WORD_TEXT.split()


def filler_text(rng: random.Random, num_words: int) -> str:
    """num_words words drawn from a fixed list, as one line of text."""
    return " ".join(rng.choice(_WORDS) for _ in range(num_words))
