"""eval.metrics: ROUGE-L and BLEU against the packages' own computations and loop-written
formulas, perplexity against transformers' own loss on a tiny model built here."""

import json
import math
from collections import Counter

import pytest
import torch

from rl_service.config import DatasetConfig, EvalConfig
from rl_service.tasks.data_files import DataError
from rl_service.tasks.dataset import DatasetTask
from rl_service.tasks.text_metrics import TextEval, bleu, perplexity, read_texts, rouge_l

HYPS = ["the cat sat on the mat", "a quick brown fox jumps", "", "numbers 1 2 3 are running"]
REFS = ["the cat on the mat", "the quick brown fox jumped over", "nothing here", "numbers 1 2 3 4 ran"]


def test_rouge_l_is_the_packages_mean_f1_and_the_lcs_formula():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)) / len(HYPS)
    assert rouge_l(HYPS, REFS) == pytest.approx(expected, abs=1e-12)
    # by hand: LCS("the cat sat on the mat", "the cat on the mat") = 5 words: P 5/6, R 5/5
    p, r = 5 / 6, 1.0
    assert rouge_l(HYPS[:1], REFS[:1]) == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    assert rouge_l(["x y"], ["x y"]) == 1.0 and rouge_l(["x"], ["y"]) == 0.0


def _loop_bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 written out: clipped n-gram counts summed over the corpus, geometric mean,
    brevity penalty; whitespace tokens (the strings below need no 13a splitting)."""
    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for h, r in zip(hyps, refs):
        ht, rt = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(ht), ref_len + len(rt)
        for n in range(1, 5):
            hc = Counter(tuple(ht[i : i + n]) for i in range(len(ht) - n + 1))
            rc = Counter(tuple(rt[i : i + n]) for i in range(len(rt) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(ht) - n + 1, 0)
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


def test_bleu_is_sacrebleus_corpus_score_and_the_loop_formula():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a quick brown fox jumps"]
    refs = ["the cat sat on a mat", "a quick brown fox ran"]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert bleu(hyps, refs) == pytest.approx(_loop_bleu(hyps, refs), abs=1e-9)
    # by hand, the first pair alone: p1..p4 = 5/6, 3/5, 2/4, 1/3, same length (BP 1)
    assert bleu(hyps[:1], refs[:1]) == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-9)
    assert bleu(["85", "123"], ["85", "123"], tokenize="char") == 0.0  # no 4-grams at all: BLEU-4 is 0...
    assert bleu(["85", "123"], ["85", "123"], tokenize="char", max_order=2) == pytest.approx(100.0)  # ...BLEU-2 is not
    assert bleu(["85", "124"], ["85", "123"], tokenize="char", max_order=2) == pytest.approx(
        100 * math.sqrt(4 / 5 * 2 / 3) * math.exp(0)  # chars 4/5 match, bigrams 2/3 (85, 12)
    )
    with pytest.raises(ValueError, match="2 completions for 1 references"):
        bleu(["a", "b"], ["a"])


def test_perplexity_is_exp_of_the_token_weighted_mean_nll():
    expected = math.exp((3 * math.log(2) + math.log(4)) / 4)
    assert perplexity([[math.log(0.5)] * 3, [math.log(0.25)]]) == pytest.approx(expected)
    with pytest.raises(ValueError):
        perplexity([[], []])


# ------------------------------------------------------------------ perplexity on a tiny model


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, one_torch_thread):
    from transformers import AutoConfig, AutoModelForCausalLM

    from rl_service.models.tokenizer import build_tokenizer

    tok = build_tokenizer([f"{a}+{b}={a + b} apples and pears" for a in range(40) for b in range(40)], vocab_size=120)
    cfg = AutoConfig.for_model(
        "qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen2") / "model"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _hf_nll(model_dir, ids: list[int], start: int) -> tuple[float, int]:
    """transformers' own loss (mean NLL of the labelled tokens) times their count."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    labels = torch.tensor([[-100] * start + ids[start:]])
    with torch.no_grad():
        loss = model(torch.tensor([ids]), labels=labels).loss.item()
    return loss * (len(ids) - start), len(ids) - start


def _engine_perplexity(model_dir, text_eval: TextEval) -> float:
    from rl_service.rollout.hf_engine import HFEngine

    seqs = text_eval.perplexity_sequences
    rows = HFEngine(str(model_dir)).score([list(s.ids) for s in seqs])
    return perplexity([s.take(lp) for s, lp in zip(seqs, rows)])


def test_perplexity_of_a_text_file_equals_transformers_loss(tiny_qwen2, tmp_path):
    from transformers import AutoTokenizer

    texts = ["3+4=7 apples", "12+30=42 and pears", "", "1+1=2"]
    (tmp_path / "held.txt").write_text("\n".join(texts) + "\n")
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    cfg = EvalConfig(metrics=["perplexity"], perplexity_file=str(tmp_path / "held.txt"))
    te = TextEval.prepare(cfg, task=None, tokenizer=tok, context=64)
    assert len(te.perplexity_sequences) == 3  # the empty line is not a text
    nll = [_hf_nll(tiny_qwen2, tok(t).input_ids, 1) for t in texts if t]
    expected = math.exp(sum(n for n, _ in nll) / sum(c for _, c in nll))
    assert _engine_perplexity(tiny_qwen2, te) == pytest.approx(expected, rel=1e-5)
    assert expected > 1.0


def test_perplexity_of_references_scores_only_the_reference_given_its_prompt(tiny_qwen2, tmp_path):
    from transformers import AutoTokenizer

    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "gold": f"{a + b} apples"} for a, b in [(3, 4), (10, 20)]]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = str(tmp_path / "eval.jsonl")
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    task = DatasetTask(DatasetConfig(train=path, eval=path, reference_key="gold")).bind(tok)
    te = TextEval.prepare(EvalConfig(metrics=["perplexity", "rouge_l"]), task, tok, context=64)
    assert te.references == ("7 apples", "30 apples")
    nll = []
    for p, ref in zip(task.eval_prompts, te.references):
        prompt = list(p.token_ids)
        nll.append(_hf_nll(tiny_qwen2, prompt + tok(ref, add_special_tokens=False).input_ids, len(prompt)))
    expected = math.exp(sum(n for n, _ in nll) / sum(c for _, c in nll))
    assert _engine_perplexity(tiny_qwen2, te) == pytest.approx(expected, rel=1e-5)
    assert te.completion_metrics(["7 apples", "30"]) == {"eval/rouge_l": pytest.approx((1.0 + 2 / 3) / 2)}


# ------------------------------------------------------------------ bad inputs: one line each


def test_a_row_without_its_reference_is_named(tmp_path, tiny_qwen2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    path = str(tmp_path / "eval.jsonl")
    need = "eval.metrics need a reference text"
    for rows, why in (
        ([{"prompt": "1+1=", "gold": "2"}, {"prompt": "2+2="}], f"row 2: {need}: field 'gold' is missing"),
        ([{"prompt": "1+1=", "gold": 2}], f"row 1: {need}: field 'gold' is int 2, not a string"),
    ):
        (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        task = DatasetTask(DatasetConfig(train=path, eval=path, reference_key="gold")).bind(tok)
        with pytest.raises(DataError, match=f"eval.jsonl: {why}"):
            TextEval.prepare(EvalConfig(metrics=["bleu"]), task, tok, context=64)
    task = DatasetTask(DatasetConfig(train=path, eval=path)).bind(tok)
    with pytest.raises(DataError, match=r"row 1: .*no response \(field 'response'"):
        TextEval.prepare(EvalConfig(metrics=["rouge_l"]), task, tok, context=64)


def test_perplexity_files_bad_and_good(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "a b"}\n{"body": "c"}\n')
    with pytest.raises(DataError, match=r"t.jsonl: row 2: field 'text' \(eval.perplexity_key\) is missing"):
        read_texts(str(tmp_path / "t.jsonl"))
    assert read_texts(str(tmp_path / "t.jsonl"), key="text", limit=1) == ["a b"]
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="no text for eval.metrics perplexity"):
        read_texts(str(tmp_path / "blank.txt"))
    with pytest.raises(DataError, match="no such file"):
        read_texts(str(tmp_path / "absent.txt"))
