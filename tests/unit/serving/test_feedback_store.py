"""The feedback store keeps who gave a label (`annotator`), exports it for preference.noise, and
opens a database made before that column existed without losing a row."""

import json
import sqlite3

import pytest

from rl_service.preference.data import read_jsonl
from rl_service.serving import protocol as P
from rl_service.serving.feedback import FeedbackStore, export_preferences

OLD_SCHEMA = [
    "CREATE TABLE completions (id TEXT NOT NULL, choice_index INTEGER NOT NULL, created DOUBLE PRECISION NOT NULL, "
    "kind TEXT NOT NULL, model TEXT NOT NULL, policy_version INTEGER NOT NULL, prompt TEXT NOT NULL, "
    "completion TEXT NOT NULL, finish_reason TEXT NOT NULL, PRIMARY KEY (id, choice_index))",
    "CREATE TABLE ratings (id TEXT PRIMARY KEY, completion_id TEXT NOT NULL, choice_index INTEGER NOT NULL, "
    "rating DOUBLE PRECISION NOT NULL, comment TEXT, created DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE preferences (id TEXT PRIMARY KEY, prompt TEXT NOT NULL, chosen TEXT NOT NULL, "
    "rejected TEXT NOT NULL, comment TEXT, created DOUBLE PRECISION NOT NULL)",
]


def test_annotators_are_stored_and_exported_with_their_preferences(tmp_path):
    store = FeedbackStore(str(tmp_path / "fb.sqlite"))
    store.add_preference("f1", "1+1=", "2", "3", None, annotator="ann")
    store.add_preference("f2", "1+1=", "3", "2", None)  # nobody named
    store.record_completion("c1", "completion", "policy", 0, ["2+2="] * 2, [("4", "stop"), ("5", "stop")])
    store.add_rating("r1", "c1", 0, 1.0, None, annotator="bob")
    store.add_rating("r2", "c1", 1, 0.0, None, annotator="bob")
    n = export_preferences(store, tmp_path / "prefs.jsonl")
    store.close()
    lines = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert n == 3 and lines[0] == {"prompt": "1+1=", "chosen": "2", "rejected": "3", "annotator": "ann"}
    assert "annotator" not in lines[1] and lines[2] == {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    assert read_jsonl(tmp_path / "prefs.jsonl")[0]["annotator"] == "ann"  # what train-rm reads


def test_a_database_from_before_the_annotator_column_is_migrated_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:
        for stmt in OLD_SCHEMA:
            conn.execute(stmt)
        conn.execute("INSERT INTO preferences VALUES ('old', 'p', 'a', 'b', NULL, 1.0)")
    store = FeedbackStore(str(db))
    store.add_preference("new", "p", "b", "a", None, annotator="x")
    pairs = store.preference_pairs()
    store.close()
    assert pairs == [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "b", "rejected": "a", "annotator": "x"},
    ]
    FeedbackStore(str(db)).close()  # opening it again: the column is there, nothing to add


def test_the_feedback_route_takes_an_annotator_string_only():
    assert P.PreferenceFeedback(prompt="p", chosen="a", rejected="b", annotator="u7").annotator == "u7"
    assert P.RatingFeedback(completion_id="c", rating=1.0, annotator="u7").annotator == "u7"
    with pytest.raises(P.ValidationError):
        P.PreferenceFeedback(prompt="p", chosen="a", rejected="b", annotator=7)
    with pytest.raises(P.ValidationError):
        P.RatingFeedback(completion_id="c", rating=1.0, annotator="x" * 201)


def test_prompts_are_every_distinct_prompt_asked_or_compared_first_seen_first(tmp_path):
    """What the online service trains on (rl_service/online/service.py)."""
    store = FeedbackStore(str(tmp_path / "fb.sqlite"))
    store.record_completion("c1", "completion", "policy", 0, ["2+2=", "3+3="], [("4", "stop"), ("6", "stop")])
    store.add_preference("f1", "1+1=", "2", "3", None)
    store.record_completion("c2", "completion", "policy", 0, ["2+2="], [("5", "stop")])
    assert store.prompts() == ["2+2=", "3+3=", "1+1="]
    store.close()
