"""A user reward plug-in for the dataset-task tests: it needs the row's other fields (answer, id,
source) as keyword arguments and raises without them, so a lost field shows as dropped samples."""


def leading_digits_with_fields(prompt: str, completion: str, answer: str, id: int, source: str, **_) -> float:
    if not isinstance(id, int) or source != "written-by-test":
        raise ValueError(f"row fields did not arrive: id={id!r} source={source!r}")
    got, score = completion.strip(), 0.0
    for a, b in zip(got, answer):
        if a != b:
            break
        score += 1.0 / len(answer)
    return score
