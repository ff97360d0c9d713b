"""The text-environment API, the guess-number env and task, and the multi-turn episode runner
(driven by a scripted engine and a character tokenizer: no torch model, ray or vllm)."""

import random
from pathlib import Path

import pytest

from rl_service.config import ConfigError, GuessNumberConfig, load_config
from rl_service.envs import ENV_KEY, GuessNumberEnv, env_from_metadata, make_env, run_episodes
from rl_service.envs.guess_number import CORRECT, HIGHER, INVALID, LOWER, OUT_OF_TURNS
from rl_service.reward.functions import env_return
from rl_service.rollout.engine import Completion
from rl_service.tasks import GuessNumberTask, PromptStream, make_task

BOS, EOS = 1, 2


class CharTokenizer:
    """One id per character (ord + 3); BOS prepended unless add_special_tokens=False."""

    eos_token_id, pad_token_id = EOS, 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([BOS] if add_special_tokens else []) + [ord(c) + 3 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3) for i in ids if i > 2)


class BisectEngine:
    """Scripted policy: reads the feedback in its context and bisects. Records every call."""

    def __init__(self, tok, low=0, high=9, emit_eos=True):
        self.tok, self.low, self.high, self.emit_eos, self.calls = tok, low, high, emit_eos, []

    def _guess(self, ids):
        text = self.tok.decode(ids)
        lo, hi = self.low, self.high
        for part in text.split(":")[1:]:  # "guess 0-9: 4 higher: 7 lower: " -> guesses and feedback
            words = part.split()
            if len(words) == 2:
                g = int(words[0])
                lo, hi = (g + 1, hi) if words[1] == "higher" else (lo, g - 1)
        return str((lo + hi) // 2)

    def generate_ids(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=None):
        self.calls.append([list(p) for p in prompt_ids])
        out = []
        for p in prompt_ids:
            ids = [ord(c) + 3 for c in self._guess(p)] + ([EOS] if self.emit_eos else [])
            ids = ids[:max_new_tokens]
            c = Completion(
                prompt_ids=tuple(p),
                token_ids=tuple(ids),
                logprobs=tuple(-0.5 - i for i in range(len(ids))),
                text=self.tok.decode(ids),
                finish_reason="stop" if EOS in ids else "length",
            )
            out.append([c] * n)
        return out


def meta(seed, **kw):
    return {"env": "guess_number", "env_seed": seed, "env_kwargs": {"low": 0, "high": 9, "max_turns": 4, **kw}}


def secret_of(seed, **kw):
    env, s = env_from_metadata(meta(seed, **kw))
    env.reset(s)
    return env.secret


# ------------------------------------------------------------------ the env


def test_env_feedback_and_terminal_reward():
    env = GuessNumberEnv(low=0, high=9, max_turns=4)
    assert env.reset(seed=3) == "guess 0-9: "
    secret = env.secret
    wrong = (secret + 1) % 10
    obs, r, term, trunc, info = env.step(f" {wrong}\n")
    assert obs == (LOWER if secret < wrong else HIGHER) and r == 0.0 and not term and not trunc
    assert info == {"turns": 1, "valid": True, "success": False}
    obs, r, term, trunc, info = env.step(str(secret))
    assert (obs, r, term, trunc, info["success"]) == (CORRECT, 1.0, True, False, True)


def test_env_invalid_guesses_cost_turns_then_truncate():
    env = GuessNumberEnv(low=0, high=9, max_turns=3)
    env.reset(seed=0)
    for bad in ["x", "12"]:
        obs, r, term, trunc, info = env.step(bad)
        assert obs == INVALID and r == 0.0 and not (term or trunc) and not info["valid"]
    obs, r, term, trunc, info = env.step("-1")
    assert (obs, r, term, trunc) == (OUT_OF_TURNS, 0.0, False, True)
    with pytest.raises(RuntimeError):
        env.step("3")


def test_env_reset_is_a_function_of_the_seed_and_penalty_applies():
    secrets = {s: secret_of(s) for s in range(200)}
    assert secrets == {s: secret_of(s) for s in range(200)}
    assert set(secrets.values()) == set(range(10))
    env = make_env("guess_number", low=0, high=9, max_turns=4, turn_penalty=0.25)
    env.reset(5)
    wrong = (env.secret + 1) % 10
    env.step(str(wrong)), env.step(str(wrong))
    assert env.step(str(env.secret))[1] == pytest.approx(0.5)
    with pytest.raises(KeyError):
        make_env("no_such_env")


# ------------------------------------------------------------------ episodes


def test_episode_token_ids_are_exact_concatenations():
    tok, eng = CharTokenizer(), BisectEngine(CharTokenizer())
    metas = [meta(s) for s in range(12)]
    groups = run_episodes(eng, tok, metas, n=2, max_new_tokens=3, max_tokens=64, seed=0)
    assert eng.calls[0] == [tok("guess 0-9: ")["input_ids"]] * 12  # turn 1: the prompts
    for m, group in zip(metas, groups):
        assert len(group) == 2
        for ep in group:
            assert ep.summary()["env_success"] and ep.terminated and not ep.truncated
            assert ep.prompt_ids == tok("guess 0-9: ")["input_ids"]
            # Rebuild the expected ids from the env's own transcript.
            env, seed = env_from_metadata(m)
            env.reset(seed)
            expect_ids, expect_mask, expect_lp = [], [], []
            lo, hi = 0, 9
            while True:
                g = (lo + hi) // 2
                gen = [ord(c) + 3 for c in str(g)] + [EOS]
                expect_ids += gen
                expect_mask += [1] * len(gen)
                expect_lp += [-0.5 - i for i in range(len(gen))]
                obs, _, term, trunc, _ = env.step(str(g))
                if term or trunc:
                    break
                o = tok(obs, add_special_tokens=False)["input_ids"]
                expect_ids += o
                expect_mask += [0] * len(o)
                expect_lp += [0.0] * len(o)
                lo, hi = (g + 1, hi) if obs == HIGHER else (lo, g - 1)
            assert ep.response_ids == expect_ids and ep.response_mask == expect_mask
            assert ep.response_logprobs == expect_lp
            assert ep.turns == sum(1 for i, x in enumerate(expect_ids) if x == EOS)
    # Every later call's inputs are earlier inputs + generated ids + observation ids, verbatim.
    for call in eng.calls[1:]:
        for ctx in call:
            ep = next(e for g in groups for e in g if e.context[: len(ctx)] == ctx)
            assert ep.response_mask[len(ctx) - len(ep.prompt_ids) - 1] == 0  # ends on env text


def test_episode_budget_truncates_with_length_and_return_zero():
    tok, eng = CharTokenizer(), BisectEngine(CharTokenizer())
    budget = 12 + 2 + 9 + 2  # BOS+prompt, one guess+EOS, " higher: ", room for one more guess
    s = next(s for s in range(100) if secret_of(s) in (5, 6, 8, 9))  # bisect: 4, then 7: misses both
    ((ep,),) = run_episodes(eng, tok, [meta(s)], n=1, max_new_tokens=2, max_tokens=budget)
    assert ep.turns == 2 and ep.finish_reason == "length" and ep.truncated and not ep.terminated
    assert ep.episode_return == 0.0 and len(ep.context) <= budget
    assert ep.response_mask[-1] == 1  # nothing after the last generated token
    with pytest.raises(ValueError, match="budget"):
        run_episodes(eng, tok, [meta(s)], n=1, max_new_tokens=8, max_tokens=15)


def test_env_return_reward_fn():
    assert env_return("p", "c", env_return=0.75, env_turns=2, answer="x") == 0.75
    with pytest.raises(ValueError):
        env_return("p", "c", answer="3")


def test_env_return_is_a_builtin_reward_name():
    from rl_service.reward.functions import resolve_reward_fn

    assert resolve_reward_fn("env_return") is env_return
    cfg = load_config(str(Path(__file__).resolve().parents[3] / "configs/guess_number.yaml"), [])
    assert cfg.reward.fn == "env_return" and cfg.task.name == "guess_number"


# ------------------------------------------------------------------ the task


def test_task_config_and_factory():
    cfg = GuessNumberConfig(guess_low=0, guess_high=9, num_eval=20)
    task = make_task(cfg)
    assert isinstance(task, GuessNumberTask) and task.is_env
    with pytest.raises(ConfigError, match="guess_low"):
        load_config(None, ["task.name=guess_number", "task.guess_low=5", "task.guess_high=5"])
    with pytest.raises(ConfigError, match="task.name"):
        load_config(None, ["task.name=chess"])


def test_task_prompts_rebuild_their_episode_and_avoid_held_out_seeds():
    task = GuessNumberTask(GuessNumberConfig(num_eval=50, seed=3))
    held = {p.metadata["env_seed"] for p in task.eval_prompts}
    assert len(held) == 50 and all(p.prompt_id < 0 for p in task.eval_prompts)
    stream = PromptStream(task, seed=1)
    prompts = stream.next_batch(300)
    assert [p.prompt_id for p in prompts] == list(range(300))
    assert not held & {p.metadata["env_seed"] for p in prompts}
    again = PromptStream(task, seed=1)
    again.load_state_dict({"epoch": 0, "index": 100, "next_id": 100})
    assert again.next_batch(5) == prompts[100:105]  # resumable like the addition stream
    env, seed = env_from_metadata(prompts[0].metadata)
    assert env.reset(seed) == prompts[0].text and prompts[0].metadata[ENV_KEY] == "guess_number"


def test_task_transcript_ids_mask_only_guesses():
    task, tok = GuessNumberTask(GuessNumberConfig(num_eval=5)), CharTokenizer()
    turns = task.naive_episode(17, random.Random(0))
    ids, mask = task.transcript_ids(tok, 17, turns)
    assert len(ids) == len(mask) and ids[0] == BOS
    policy = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(policy) == "".join(g for g, _ in turns) and policy.count(EOS) == len(turns)
    assert tok.decode(ids) == "guess 0-9: " + "".join(g + o for g, o in turns[:-1]) + turns[-1][0]
