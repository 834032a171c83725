"""bnfold.messages: a quoted exception is one line and, when shortened, ends at a word boundary with " …"."""

from __future__ import annotations

import pytest

from bnfold.messages import first_line, one_line, shorten

WORDS = "the quick brown fox jumps over the lazy dog and keeps running far beyond the river bank"


@pytest.mark.parametrize("limit", range(10, len(WORDS) + 5))
def test_shortened_text_ends_on_a_whole_word(limit: int) -> None:
    short = shorten(WORDS, limit)
    assert len(short) <= limit
    if len(WORDS) <= limit:
        assert short == WORDS
    else:
        kept = short.removesuffix(" …")
        assert short.endswith(" …") and WORDS.startswith(kept + " ")
        # the next word would not have fitted
        next_word = WORDS[len(kept) + 1 :].split(" ")[0]
        assert len(kept) + 1 + len(next_word) + len(" …") > limit


def test_a_first_word_longer_than_the_limit_is_kept_whole() -> None:
    word = "x" * 40
    assert shorten(f"{word} tail", 20) == f"{word} tail"


def test_first_line_skips_blank_lines_and_collapses_whitespace() -> None:
    error = RuntimeError("\n   \n  shape   mismatch:\t(3, 4)  \nTraceback follows\n")
    assert first_line(error) == "shape mismatch: (3, 4)"


def test_first_line_of_an_empty_message_is_the_type_name() -> None:
    assert first_line(ValueError()) == "ValueError"
    assert first_line(ValueError("  \n ")) == "ValueError"
    assert one_line(KeyError()) == "KeyError"


def test_first_line_shortens_to_its_limit_and_one_line_joins_every_line() -> None:
    error = RuntimeError(WORDS + "\nsecond line")
    assert first_line(error, limit=30) == "the quick brown fox jumps …"
    assert first_line(error, limit=None) == WORDS
    assert one_line(error) == WORDS + " second line"
