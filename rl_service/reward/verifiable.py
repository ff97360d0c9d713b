"""Built-in rewards for verifiable data: the gold answer is a field of the data row.

    exact_match     normalised completion == normalised answer
    numeric_match   the last number in the completion == the numeric answer (relative tolerance)
    math_verify     the completion's final (boxed / LaTeX) answer is mathematically the answer
    regex_format    the completion matches a regex: the "format" half of format + correctness

Each is ``fn(prompt, completion, *, <parameters>, **metadata) -> float`` (1.0 or 0.0). The
keyword-only parameters are what a `reward.fns` entry's `args` may set (ARG_CHECKS says which
values are valid; the config loader checks them before Ray starts). `answer_key` names the row
field holding the gold answer (default `answer`). A row without that field raises, so the scorer
drops the sample (`on_error`) instead of scoring it 0: missing gold is a data problem, not a
wrong answer. Imports nothing heavy (math-verify is imported on first use).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from fractions import Fraction
from typing import Any

_QUOTES = "\"'`\u2018\u2019\u201c\u201d"
_TRAILING_PUNCT = ".,;:!?"
# A number not glued to a word or a decimal point on its left (so `x2` and the `5` of `3.5` are
# not numbers, `5-3` ends in 3, `= -3` in -3): optional minus, digits with optional thousands
# commas, optional decimals and exponent, or a simple fraction `a/b`.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d+/\d+|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)")


def _gold(metadata: dict[str, Any], answer_key: str) -> Any:
    """The row's gold answer; raises (-> the sample is dropped) when the row has none."""
    value = metadata.get(answer_key)
    if value is None:
        fields = ", ".join(sorted(metadata)) or "none"
        raise ValueError(f"the row has no {answer_key!r} field (its fields: {fields})")
    return value


def normalize_answer(text: str) -> str:
    """What exact_match compares: surrounding whitespace stripped, every run of whitespace one
    space, case-folded, then quotes (" ' ` and curly quotes) stripped from both ends and the
    sentence punctuation . , ; : ! ? from the end (repeatedly, whitespace too).
    `'  "Paris".'` -> `paris`; `-5` stays `-5`; `(a)` stays `(a)`."""
    text = " ".join(str(text).split()).casefold()
    while True:
        stripped = text.lstrip(_QUOTES + " ").rstrip(_QUOTES + _TRAILING_PUNCT + " ")
        if stripped == text:
            return text
        text = stripped


def exact_match(prompt: str, completion: str, *, answer_key: str = "answer", **metadata: Any) -> float:
    """1.0 when the whole completion equals the row's answer after `normalize_answer`, else 0.0.

    >>> exact_match("Capital of France?", " Paris. ", answer="paris")
    1.0
    >>> exact_match("Capital of France?", "It is Paris", answer="Paris")
    0.0
    >>> exact_match("2+2=", "4", answer_key="label", label=4)
    1.0
    """
    return 1.0 if normalize_answer(completion) == normalize_answer(_gold(metadata, answer_key)) else 0.0


def parse_number(text: str) -> float | None:
    """The value of one `_NUMBER` match (`1,234.5`, `-3`, `1/2`, `2e3`); None for `x/0`."""
    text = text.replace(",", "")
    if "/" in text:
        num, den = text.split("/")
        return float(Fraction(int(num), int(den))) if int(den) != 0 else None
    return float(text)


def last_number(text: str) -> float | None:
    """The last number written in `text`, or None when it has none."""
    for match in reversed(_NUMBER.findall(str(text))):
        value = parse_number(match)
        if value is not None:
            return value
    return None


def numeric_match(
    prompt: str, completion: str, *, answer_key: str = "answer", tolerance: float = 1e-6, **metadata: Any
) -> float:
    """1.0 when the last number in the completion is the answer within `tolerance`, else 0.0.

    Numbers: integers, decimals, negatives, thousands commas (`1,234`), exponents (`2e3`),
    simple fractions (`3/4`). The gold is the row's answer if it is a number, else the last
    number in its text (so a GSM8K-style `... #### 72` works). Equal means
    |pred - gold| <= tolerance * max(1, |gold|): relative above 1, absolute below.

    >>> numeric_match("", "So the total is 1,234 apples.", answer="1234")
    1.0
    >>> numeric_match("", "x = -0.5", answer=-0.5)
    1.0
    >>> numeric_match("", "3/4", answer="0.75")
    1.0
    >>> numeric_match("", "about 12 or 13", answer=12)
    0.0
    """
    gold_raw = _gold(metadata, answer_key)
    is_number = isinstance(gold_raw, (int, float)) and not isinstance(gold_raw, bool)
    gold = float(gold_raw) if is_number else last_number(str(gold_raw))
    if gold is None or not math.isfinite(gold):
        raise ValueError(f"the row's {answer_key!r} field {gold_raw!r} has no number")
    pred = last_number(completion)
    return 1.0 if pred is not None and abs(pred - gold) <= tolerance * max(1.0, abs(gold)) else 0.0


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off; off is our choice (below)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_math_verify_lock = threading.Lock()
_math_verify_api: tuple | None = None


def _math_verify():
    """(parse, verify) of the math-verify package, imported on first use (sympy is heavy)."""
    global _math_verify_api
    with _math_verify_lock:
        if _math_verify_api is None:
            from math_verify import parse, verify

            for name in ("math_verify.parser", "math_verify.grader"):
                logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
            _math_verify_api = (parse, verify)
    return _math_verify_api


def math_verify(prompt: str, completion: str, *, answer_key: str = "answer", **metadata: Any) -> float:
    """1.0 when math-verify finds the completion's answer equal to the row's, else 0.0.

    The completion's answer is what math-verify extracts (a `\\boxed{...}` first, then LaTeX
    `$...$`, then a plain expression); the gold is the row's answer, parsed the same way (`0.5`,
    `$\\frac{1}{2}$`, `\\boxed{1/2}` all work). Equality is symbolic or numeric (sympy).

    >>> math_verify("", "so the answer is $\\\\boxed{\\\\frac{1}{2}}$", answer="0.5")
    1.0
    >>> math_verify("", "\\\\boxed{x^2+1}", answer="$1+x^2$")
    1.0
    >>> math_verify("", "\\\\boxed{3}", answer="4")
    0.0

    Timeouts: math-verify bounds each parse/compare with signal.alarm, which works only in a
    process's main thread; Ray runs actor methods in other threads, where it raises. So the
    timeout (5 s) is on in the main thread and off elsewhere: a scorer actor can spend long
    on a pathological expression, never fails on the threading.
    """
    parse, verify = _math_verify()
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(str(_gold(metadata, answer_key)), parsing_timeout=timeout)
    if not gold:
        raise ValueError(f"math-verify cannot parse the row's {answer_key!r} field {metadata[answer_key]!r}")
    pred = parse(completion, parsing_timeout=timeout)
    return 1.0 if pred and verify(gold, pred, timeout_seconds=timeout) else 0.0


def regex_format(prompt: str, completion: str, *, pattern: str, search: bool = False, **_: Any) -> float:
    """1.0 when the completion (surrounding whitespace stripped) matches `pattern` in full, else
    0.0; with `search: true`, when the pattern occurs anywhere in it. `.` matches newlines too
    (re.DOTALL), so `<think>.*</think>` spans lines.

    >>> p = r"<think>.*</think>\\s*<answer>.*</answer>"
    >>> regex_format("", "<think>7*6\\nis 42</think> <answer>42</answer>", pattern=p)
    1.0
    >>> regex_format("", "<answer>42</answer>", pattern=p)
    0.0
    >>> regex_format("", "so: <answer>42</answer>!", pattern=r"<answer>\\d+</answer>", search=True)
    1.0
    """
    matcher = re.search if search else re.fullmatch
    return 1.0 if matcher(pattern, completion.strip(), flags=re.DOTALL) else 0.0


def _answer_key_problem(args: dict[str, Any]) -> str | None:
    key = args.get("answer_key", "answer")
    return None if isinstance(key, str) and key else f"answer_key: expected a field name, got {key!r}"


def _numeric_problem(args: dict[str, Any]) -> str | None:
    tol = args.get("tolerance", 0.0)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 or not math.isfinite(tol):
        return f"tolerance: expected a number >= 0, got {tol!r}"
    return _answer_key_problem(args)


def _regex_problem(args: dict[str, Any]) -> str | None:
    pattern = args.get("pattern")
    if not isinstance(pattern, str):
        return f"pattern: expected a regex string, got {pattern!r}"
    try:
        re.compile(pattern, re.DOTALL)
    except re.error as err:
        return f"pattern: not a valid regex ({err})"
    if not isinstance(args.get("search", False), bool):
        return f"search: expected true or false, got {args['search']!r}"
    return None


VERIFIABLE = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "math_verify": math_verify,
    "regex_format": regex_format,
}
ARG_CHECKS = {
    "exact_match": _answer_key_problem,
    "numeric_match": _numeric_problem,
    "math_verify": _answer_key_problem,
    "regex_format": _regex_problem,
}
"""Built-in name -> why its `args` values are unusable (None when they are fine). The argument
names themselves are checked against the function's keyword-only parameters."""
