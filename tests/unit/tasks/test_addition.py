"""Addition task: held-out split, verifier, resumable prompt stream."""

from rl_service.config import AdditionConfig
from rl_service.tasks.addition import AdditionTask, Problem
from rl_service.tasks.stream import PromptStream


def test_split_is_disjoint_complete_and_deterministic():
    task = AdditionTask(AdditionConfig(digits=2, num_eval=200, seed=7))
    held_out = {p.prompt for p in task.eval_problems}
    train = {f"{a}+{b}=" for a, b in task.train_pairs}
    assert len(held_out) == 200 and len(train) == 10000 - 200
    assert not held_out & train
    again = AdditionTask(AdditionConfig(digits=2, num_eval=200, seed=7))
    assert again.eval_problems == task.eval_problems
    other = AdditionTask(AdditionConfig(digits=2, num_eval=200, seed=8))
    assert other.eval_problems != task.eval_problems


def test_problems_are_correct_sums_and_verifier_is_exact():
    task = AdditionTask(AdditionConfig(digits=2, num_eval=50))
    for p in task.eval_problems:
        a, b = p.prompt.rstrip("=").split("+")
        assert int(p.answer) == int(a) + int(b) and 0 <= int(a) < 100 and 0 <= int(b) < 100
    assert task.verify(" 85 ", "85") == 1.0
    assert task.verify("85</s>", "85") == 0.0
    assert task.verify("850", "85") == 0.0
    assert Problem("37+48=", "85") == Problem("37+48=", "85")


def test_prompt_stream_is_deterministic_with_global_ids():
    task = AdditionTask(AdditionConfig(digits=1, num_eval=10))
    a, b = PromptStream(task, seed=3), PromptStream(task, seed=3)
    batch = a.next_batch(5) + a.next_batch(5)
    assert [p.prompt_id for p in batch] == list(range(10))
    assert batch == b.next_batch(10)
    assert all(int(p.metadata["answer"]) == sum(map(int, p.text.rstrip("=").split("+"))) for p in batch)
    assert PromptStream(task, seed=4).next_batch(10) != batch


def test_prompt_stream_epochs_are_permutations_of_train_pairs():
    task = AdditionTask(AdditionConfig(digits=1, num_eval=10))  # 90 training pairs
    stream = PromptStream(task, seed=0)
    epoch0 = [p.text for p in stream.next_batch(90)]
    epoch1 = [p.text for p in stream.next_batch(90)]
    expected = sorted(f"{a}+{b}=" for a, b in task.train_pairs)
    assert sorted(epoch0) == expected and sorted(epoch1) == expected
    assert epoch0 != epoch1
    assert stream.state_dict() == {"epoch": 1, "index": 90, "next_id": 180}
    assert stream.next_batch(1)[0].prompt_id == 180 and stream.state_dict()["epoch"] == 2


def test_prompt_stream_resume_gives_the_same_prompts():
    task = AdditionTask(AdditionConfig(digits=1, num_eval=10))
    original = PromptStream(task, seed=5)
    original.next_batch(85)
    state = original.state_dict()
    expected = original.next_batch(20)  # crosses the epoch boundary
    resumed = PromptStream(task, seed=5)
    resumed.load_state_dict(state)
    assert resumed.position == 85
    assert resumed.next_batch(20) == expected


def test_large_digit_spaces_sample_instead_of_enumerating():
    task = AdditionTask(AdditionConfig(digits=4, num_eval=100))
    assert task.train_pairs is None
    prompts = PromptStream(task, seed=0).next_batch(200)
    held_out = {p.prompt for p in task.eval_problems}
    assert not held_out & {p.text for p in prompts}
