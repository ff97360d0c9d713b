"""StreamText: streamed pieces add up to the non-streamed answer, stop strings included."""

import random

from rl_service.serving.protocol import StreamText, apply_stop


def _stream(prefixes: list[str], stop) -> tuple[str, bool]:
    st = StreamText(stop)
    pieces = [st.update(p, final=(i == len(prefixes) - 1)) for i, p in enumerate(prefixes)]
    return "".join(pieces), st.stopped


def test_pieces_equal_final_text_without_stop():
    text = "12+34=46 and more"
    got, stopped = _stream([text[:k] for k in range(1, len(text) + 1)], None)
    assert got == text and not stopped


def test_stop_string_split_across_tokens_is_held_back_then_cut():
    # "ab" arrives as "...a" then "...ab": the "a" must not be sent before we know.
    st = StreamText(["ab"])
    assert st.update("xy", False) == "xy"
    assert st.update("xya", False) == ""  # could still become the stop string
    assert st.update("xyab", False) == ""  # it did: cut, nothing more to send
    assert st.stopped and st.sent == "xy"


def test_held_back_prefix_released_when_it_does_not_become_a_stop():
    st = StreamText("ab")
    assert st.update("xa", False) == "x"
    assert st.update("xac", False) == "ac"
    assert not st.stopped


def test_partial_utf8_character_is_held_until_complete():
    st = StreamText(None)
    assert st.update("h\ufffd", False) == "h"  # half of a multi-byte char decodes as U+FFFD
    assert st.update("hé", True) == "é"


def test_random_texts_and_stops_match_apply_stop():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice("ab12=+ ") for _ in range(rng.randint(0, 20)))
        stop = ["".join(rng.choice("ab12") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(0, 2))]
        cuts = sorted({0, len(text), *(rng.randint(0, len(text)) for _ in range(5))})
        got, stopped = _stream([text[:c] for c in cuts[1:]] or [""], stop)
        want, reason = apply_stop(text, stop, "length")
        assert got == want, (text, stop, cuts)
        assert stopped == (reason == "stop")
