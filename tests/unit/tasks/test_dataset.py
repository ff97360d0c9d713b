"""The dataset task: files in three formats, every bad input one line, token ids, metadata, drops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl_service.config import DatasetConfig, load_config
from rl_service.models.tokenizer import build_tokenizer
from rl_service.reward.functions import checked_reward, load_user_fn
from rl_service.tasks import PromptStream
from rl_service.tasks.data_files import DataError, read_rows
from rl_service.tasks.dataset import DatasetTask

REPO = Path(__file__).resolve().parents[3]
# A Qwen-style template over plain text markers (no special tokens but BOS/EOS of the tokenizer).
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "id": i} for i, (a, b) in enumerate([(1, 2), (30, 4), (5, 56)])]


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer(["1+2=3 hello world <|user|> <|assistant|> what is"] * 20, vocab_size=300)
    t.chat_template = TEMPLATE
    return t


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task_cfg(train: str, **kw) -> DatasetConfig:
    return DatasetConfig(train=train, **({"eval": train} | kw))


def test_jsonl_csv_parquet_read_the_same_rows(tmp_path):
    import datasets

    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    datasets.Dataset.from_list(ROWS).to_csv(str(tmp_path / "d.csv"), index=False)
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    got = {fmt: read_rows(str(tmp_path / f"d.{fmt}")) for fmt in ("csv", "parquet")}
    assert read_rows(jsonl) == ROWS == got["parquet"]
    # CSV has no types: the number-looking answers come back as ints (a reward compares str(answer))
    assert [r["prompt"] for r in got["csv"]] == [r["prompt"] for r in ROWS]
    assert [str(r["answer"]) for r in got["csv"]] == [r["answer"] for r in ROWS]


BAD_INPUTS = {
    "missing file": (None, "no such file"),
    "unknown format": ("d.txt", "unknown format '.txt'"),
    "empty file": ("", "empty file"),
    "not json": ('{"prompt": "a"}\n{"prompt": "b" "x": 1}\n', "row 2: not valid JSON"),
    "no prompt field": ('{"prompt": "a"}\n{"question": "b"}\n', "row 2: no prompt (expected a string field 'prompt'"),
    "wrong type": ('{"prompt": "a"}\n{"prompt": 7}\n', "row 2: field 'prompt' must be a string, got int"),
    "empty prompt": ('{"prompt": "a"}\n{"prompt": "  "}\n', "row 2: field 'prompt' is empty"),
    "bad messages": ('{"messages": [{"role": "user", "content": 3}]}\n', "row 1: messages[0] must be {role: str"),
    "bad role": ('{"messages": [{"role": "bot", "content": "x"}]}\n', "row 1: messages[0].role 'bot'"),
    "undecodable": (b'{"prompt": "a"}\n{"prompt": "\xff"}\n', "row 2: not valid UTF-8"),
    "reserved field": ('{"prompt": "a", "completion": "b"}\n', "row 1: field 'completion' would collide"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_is_one_line_naming_file_and_row(tmp_path, case):
    content, expected = BAD_INPUTS[case]
    name = "d.txt" if case == "unknown format" else "d.jsonl"
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as err:
        DatasetTask(task_cfg(str(path)))
    msg = str(err.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


def test_bad_data_exits_2_before_ray_and_leaves_the_run_dir(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n{"prompt": 3}\n')
    run_root = tmp_path / "runs"
    (run_root / "mine").mkdir(parents=True)
    (run_root / "mine" / "keep.txt").write_text("old run")
    cmd = [sys.executable, "-m", "rl_service.cli", "train", str(REPO / "configs" / "ci" / "dataset.yaml")]
    cmd += [f"task.train={bad}", f"task.eval={bad}", "name=mine", f"run_root={run_root}"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    err_lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert err_lines == [f"error: {bad}: row 2: field 'prompt' must be a string, got int 3"]
    assert (run_root / "mine" / "keep.txt").read_text() == "old run"  # nothing moved aside
    assert "ray" not in out.stdout.lower()


def test_metadata_is_every_other_field_and_reaches_the_reward(tmp_path, tok):
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "d.jsonl", ROWS))).bind(tok)
    p = task.make_prompt(1, prompt_id=7)
    assert (p.prompt_id, p.text, p.metadata) == (7, "30+4=", {"answer": "34", "id": 1})
    assert task.eval_prompts[2].metadata == {"answer": "61", "id": 2}
    fn_file = tmp_path / "rw.py"
    fn_file.write_text("def fn(prompt, completion, answer, id):\n    return float(completion == answer) + id\n")
    fn = load_user_fn(f"{fn_file}:fn")
    assert checked_reward(fn, p.text, "34", p.metadata) == 2.0


def test_plain_prompt_ids_are_the_engines_tokenization(tmp_path, tok):
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "d.jsonl", ROWS))).bind(tok)
    for i, row in enumerate(ROWS):
        assert task.make_prompt(i, i).token_ids == tuple(tok(row["prompt"]).input_ids)  # BOS added, as vLLM does


def test_messages_ids_are_the_chat_templates_own(tmp_path, tok):
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 1+2"}]},
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}], "k": 1},
    ]
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "m.jsonl", rows))).bind(tok)
    for i, row in enumerate(rows):
        turns = [m for m in row["messages"] if m["role"] != "assistant"]  # a trailing assistant turn is the target
        own = tok.apply_chat_template(turns, tokenize=True, add_generation_prompt=True)
        own = own["input_ids"] if hasattr(own, "keys") else own
        p = task.make_prompt(i, i)
        assert p.token_ids == tuple(own)
        assert p.text == tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        # the template puts BOS in itself: ids are not the text re-tokenized (that would double it)
        assert tuple(tok(p.text).input_ids) != p.token_ids
    assert task.make_prompt(1, 1).metadata == {"k": 1}


def test_string_prompts_use_the_template_only_when_asked(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    plain = DatasetTask(task_cfg(path)).bind(tok).make_prompt(0, 0)
    chat = DatasetTask(task_cfg(path, chat_template=True)).bind(tok).make_prompt(0, 0)
    assert plain.text == "1+2="
    assert chat.text == tok.apply_chat_template(
        [{"role": "user", "content": "1+2="}], tokenize=False, add_generation_prompt=True
    )
    no_template = build_tokenizer(["1+2=3"] * 5, vocab_size=280)
    with pytest.raises(DataError, match="needs a chat template"):
        DatasetTask(task_cfg(path, chat_template=True)).bind(no_template)


def test_long_prompts_are_dropped_and_counted_never_truncated(tmp_path, tok):
    rows = [{"prompt": "1+2=" * n, "answer": "x"} for n in (1, 2, 8, 1, 9)]
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "d.jsonl", rows), max_prompt_tokens=10)).bind(tok)
    assert task.dropped == {"train": 2, "eval": 2}
    assert task.summary() == {
        "data/train_rows": 3,
        "data/eval_rows": 3,
        "data/dropped_long_train": 2,
        "data/dropped_long_eval": 2,
    }
    assert all(len(task.make_prompt(i, i).token_ids) <= 10 for i in task.train_items)
    with pytest.raises(DataError, match="every train row was dropped"):
        DatasetTask(task_cfg(str(tmp_path / "d.jsonl"), max_prompt_tokens=2)).bind(tok)


def test_held_out_split_without_an_eval_file(tmp_path, tok):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    task = DatasetTask(DatasetConfig(train=path, num_eval=5)).bind(tok)
    train = {task.make_prompt(i, i).text for i in task.train_items}
    held = {p.text for p in task.eval_prompts}
    assert len(train) == 15 and len(held) == 5 and not train & held
    with pytest.raises(ValueError, match="task.eval"):
        DatasetConfig(train=path)  # neither an eval file nor a held-out count


def test_epochs_are_seeded_permutations_and_the_stream_resumes(tmp_path, tok):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(7)]
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "d.jsonl", rows))).bind(tok)
    stream = PromptStream(task, seed=3)
    first = [p.text for p in stream.next_batch(7)]
    second = [p.text for p in stream.next_batch(7)]
    assert sorted(first) == sorted(second) == sorted(r["prompt"] for r in rows)  # every row once per epoch
    assert first != second  # reshuffled per epoch
    again = PromptStream(task, seed=3)
    again.next_batch(5)
    state = again.state_dict()
    resumed = PromptStream(task, seed=3)
    resumed.load_state_dict(state)
    assert [p.text for p in resumed.next_batch(9)] == (first + second)[5:14]


def test_sft_examples_are_prompt_ids_then_the_response_with_eos(tmp_path, tok):
    rows = [
        {"prompt": "1+2=", "response": "3"},
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]},
    ]
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "d.jsonl", rows))).bind(tok)
    plain, chat = task.sft_examples()
    assert plain.prompt_ids == tuple(tok("1+2=").input_ids)
    assert plain.response_ids == tuple(tok("3", add_special_tokens=False).input_ids) + (tok.eos_token_id,)
    full = tok.apply_chat_template(rows[1]["messages"], tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    assert list(chat.prompt_ids + chat.response_ids) == full[: full.index(tok.eos_token_id) + 1]
    assert tok.decode(chat.response_ids, skip_special_tokens=True) == "world"
    no_response = DatasetTask(task_cfg(write_jsonl(tmp_path / "n.jsonl", ROWS))).bind(tok)
    with pytest.raises(DataError, match="no response for SFT"):
        no_response.sft_examples()


def test_dataset_config_loads_from_yaml_overrides(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    cfg = load_config(
        REPO / "configs" / "ci" / "dataset.yaml", [f"task.train={path}", "task.eval=null", "task.num_eval=1"]
    )
    assert cfg.task.name == "dataset" and cfg.task.eval is None and cfg.task.success_threshold == 1.0


def test_weight_sync_probes_are_the_tails_of_long_eval_prompts(tmp_path, tok):
    """A shared few-shot prefix makes every eval prompt long; the probes keep each one's last
    PROBE_MAX_TOKENS (the part that differs, ending with EOS), so the fp32 engine-vs-learner
    check is not run on sequences long enough to drift past its tolerance."""
    from rl_service.controller.evaluate import PROBE_MAX_TOKENS, probe_sequences

    prefix = "1+2=3 hello world " * 20
    rows = [{"prompt": f"{prefix}{i}+{i}=", "answer": str(2 * i)} for i in range(6)]
    task = DatasetTask(task_cfg(write_jsonl(tmp_path / "d.jsonl", rows))).bind(tok)
    full = task.probe_sequences(4)
    assert min(len(s) for s in full) > PROBE_MAX_TOKENS  # the prefix alone is longer
    probes = probe_sequences("unused: the dataset task carries its tokenizer", task, 4)
    assert [len(p) for p in probes] == [PROBE_MAX_TOKENS] * 4
    assert probes == [s[-PROBE_MAX_TOKENS:] for s in full] and all(p[-1] == tok.eos_token_id for p in probes)
    assert len({tuple(p) for p in probes}) == 4  # still four different probes
