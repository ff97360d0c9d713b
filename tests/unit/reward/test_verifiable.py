"""The built-in verifiable rewards: what each accepts and rejects, and math_verify off the main thread."""

import doctest
import threading

import pytest

import rl_service.reward.verifiable as verifiable
from rl_service.reward.functions import InvalidReward, checked_reward, resolve_reward_fn
from rl_service.reward.verifiable import exact_match, last_number, math_verify, normalize_answer, numeric_match

THINK_ANSWER = r"<think>.*</think>\s*<answer>.*</answer>"


def test_docstring_examples_hold():
    assert doctest.testmod(verifiable).failed == 0


def test_builtins_resolve_by_name():
    for name in ("exact_match", "numeric_match", "math_verify", "regex_format"):
        assert resolve_reward_fn(name) is getattr(verifiable, name)


@pytest.mark.parametrize(
    "text, normal",
    [
        ('  "Paris".  ', "paris"),
        ("New   York\n City", "new york city"),
        ("'42'!", "42"),
        ("\u201cyes\u201d", "yes"),
        ("-5", "-5"),
        ("(a)", "(a)"),
        ("3.5", "3.5"),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        (" Paris. ", "paris", 1.0),
        ("PARIS", "Paris", 1.0),
        ("It is Paris", "Paris", 0.0),
        ("5", "-5", 0.0),
        ("13", 13, 1.0),
        ("", "x", 0.0),
    ],
)
def test_exact_match(completion, answer, reward):
    assert exact_match("q", completion, answer=answer) == reward


def test_exact_match_other_field_and_missing_field():
    assert exact_match("q", "b", answer_key="label", label="B", answer="a") == 1.0
    with pytest.raises(ValueError, match=r"no 'label' field \(its fields: answer, id\)"):
        exact_match("q", "b", answer_key="label", answer="a", id=3)


@pytest.mark.parametrize(
    "text, value",
    [
        ("the answer is 42.", 42.0),
        ("1,234,567 apples", 1234567.0),
        ("x = -0.5", -0.5),
        ("5-3", 3.0),
        ("half is 1/2", 0.5),
        ("2e3", 2000.0),
        ("costs $3.50, not 4", 4.0),
        ("list 1,2,3", 3.0),
        ("x2", None),
        ("nothing", None),
        ("4/0", None),
    ],
)
def test_last_number(text, value):
    assert last_number(text) == value


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        ("So the total is 1,234 apples.", "1234", 1.0),
        ("x = -0.5", -0.5, 1.0),
        ("3/4", "0.75", 1.0),
        ("about 12 or 13", 12, 0.0),
        ("The answer: 72", "Janet sells 16 - 3 - 4 = 9 eggs ... #### 72", 1.0),
        ("no number", "7", 0.0),
        ("0.3333333", "1/3", 1.0),  # within 1e-6 absolute below 1
        ("0.333", "1/3", 0.0),
        ("1000001", 1000000, 1.0),  # within 1e-6 relative above 1
        ("1000010", 1000000, 0.0),
    ],
)
def test_numeric_match(completion, answer, reward):
    assert numeric_match("q", completion, answer=answer) == reward


def test_numeric_match_tolerance_and_bad_gold():
    assert numeric_match("q", "3.14", answer="3.14159", tolerance=1e-3) == 1.0
    assert numeric_match("q", "3.14", answer="3.14159") == 0.0
    with pytest.raises(ValueError, match="has no number"):
        numeric_match("q", "3", answer="three")


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        (r"so the answer is $\boxed{\frac{1}{2}}$", "0.5", 1.0),
        (r"\boxed{\frac{1}{2}}", r"$\frac{1}{2}$", 1.0),
        ("the answer is 0.5", r"\frac{1}{2}", 1.0),
        (r"$\boxed{1+x^2}$", "$x^2+1$", 1.0),
        (r"\boxed{3}", "4", 0.0),
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        ("I do not know", "4", 0.0),
    ],
)
def test_math_verify_in_the_main_thread(completion, answer, reward):
    assert math_verify("q", completion, answer=answer) == reward


def test_math_verify_off_the_main_thread():
    """Ray runs actor methods in threads, where math-verify's signal timeout raises: every case
    must score as it does in the main thread, through checked_reward as the scorer calls it."""
    cases = [(r"\boxed{\frac{1}{2}}", "0.5", 1.0), (r"\boxed{3}", "4", 0.0), ("x = 0.5", r"$\frac12$", 1.0)]
    got: list = []

    def score():
        try:
            got.extend(checked_reward(math_verify, "q", c, {"answer": a}) for c, a, _ in cases)
        except Exception as err:  # noqa: BLE001 - reported below
            got.append(err)

    thread = threading.Thread(target=score)
    thread.start()
    thread.join(timeout=60)
    assert got == [r for _, _, r in cases]


def test_math_verify_needs_a_parsable_gold():
    with pytest.raises(InvalidReward, match="cannot parse the row's 'answer'"):
        checked_reward(math_verify, "q", r"\boxed{1}", {"answer": "@@"})
    with pytest.raises(InvalidReward, match="no 'answer' field"):
        checked_reward(math_verify, "q", r"\boxed{1}", {})


@pytest.mark.parametrize(
    "completion, search, reward",
    [
        ("<think>7*6\nis 42</think> <answer>42</answer>", False, 1.0),
        ("  <think>a</think><answer>b</answer>\n", False, 1.0),
        ("<answer>42</answer>", False, 0.0),
        ("<think>a</think><answer>b</answer> and more", False, 0.0),
        ("preamble <think>a</think><answer>b</answer> and more", True, 1.0),
        ("no tags", True, 0.0),
    ],
)
def test_regex_format(completion, search, reward):
    assert resolve_reward_fn("regex_format")("q", completion, pattern=THINK_ANSWER, search=search) == reward
