"""A user reward plug-in used by the loop test: partial credit per correct leading digit,
so even a barely-trained model gets a non-zero, varied reward signal."""


def leading_digits(prompt: str, completion: str, answer: str = "", **_) -> float:
    got = completion.strip()
    score = 0.0
    for a, b in zip(got, answer):
        if a != b:
            break
        score += 1.0 / len(answer)
    return score - 0.1 * max(0, len(got) - len(answer))
