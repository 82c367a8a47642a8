"""Benchmark maths, question selection, sweep grids and argument errors: no model needed (fast)."""

import json

import pytest

from dyndepth.bench import summary as S
from dyndepth.bench.questions import Question, first_turns, load_questions, read_questions, resolve_bench, select_questions
from dyndepth.cli import main


def rec(qid, cat, tokens, times, steps=None, accepts=None, depths=None, ids=None, draft=None, verify=None):
    """A synthetic answer record with one entry per turn."""
    n = len(tokens)
    return {"question_id": qid, "category": cat, "choices": [{
        "new_tokens": tokens, "wall_time": times, "steps": steps or [0] * n,
        "accept_lengths": accepts or [[] for _ in range(n)], "depths": depths or [[] for _ in range(n)],
        "token_ids": ids or [[i] * t for i, t in enumerate(tokens)],
        "prefill_time": [0.0] * n, "draft_time": draft or [0.0] * n, "verify_time": verify or [0.0] * n}]}


def test_question_speed_pools_turns():
    # 10 tokens in 1 s and 30 tokens in 2 s: 40 / 3, not the mean of 10 and 15
    assert S.question_speed(rec(1, "a", [10, 30], [1.0, 2.0])) == pytest.approx(40 / 3)


def test_speedup_is_ratio_of_means_not_mean_of_ratios():
    base = [rec(1, "a", [5], [1.0]), rec(2, "b", [15], [1.0])]  # 5 and 15 tok/s: mean 10
    ours = [rec(1, "a", [10], [1.0]), rec(2, "b", [15], [1.0])]  # 10 and 15 tok/s: mean 12.5
    assert S.speedup(ours, base) == pytest.approx(1.25)  # the mean of the ratios (2x, 1x) would be 1.5


def test_speedup_uses_common_questions_only():
    base = [rec(1, "a", [10], [1.0]), rec(2, "a", [100], [1.0])]
    ours = [rec(1, "a", [20], [1.0])]
    assert S.speedup(ours, base) == pytest.approx(2.0)


def test_tau_from_accept_lengths_and_from_steps():
    tree = [rec(1, "a", [7, 5], [1, 1], steps=[3, 2], accepts=[[1, 2, 3], [2, 2]])]
    assert S.tau(tree) == pytest.approx(10 / 5)  # the prefill token is not a step
    assisted = [rec(1, "a", [12], [1.0], steps=[4])]  # no per-step lengths: every token over every forward
    assert S.tau(assisted) == pytest.approx(3.0)


def test_tau_by_turn_separates_first_and_second_turns():
    recs = [rec(1, "a", [7, 5], [1, 1], steps=[3, 2], accepts=[[1, 2, 3], [2, 2]]),
            rec(2, "a", [3], [1], steps=[1], accepts=[[3]])]  # a one-turn question counts in turn 1 only
    assert S.tau_by_turn(recs) == pytest.approx([(1 + 2 + 3 + 3) / 4, 4 / 2])
    assert S.method_stats(recs)["tau_by_turn"] == pytest.approx([2.25, 2.0])
    assert S.tau_by_turn([rec(1, "a", [12, 6], [1.0, 1.0], steps=[4, 3])]) == pytest.approx([3.0, 2.0])


def test_exactness_counts_identical_turns():
    ref = [rec(1, "a", [2, 2], [1, 1], ids=[[1, 2], [3, 4]]), rec(2, "a", [1], [1], ids=[[5]])]
    ours = [rec(1, "a", [2, 2], [1, 1], ids=[[1, 2], [3, 9]]), rec(2, "a", [1], [1], ids=[[5]])]
    assert S.exactness(ours, ref) == {"matches": 2, "turns": 3}


def test_time_split_and_early_stop_and_categories():
    records = [rec(1, "x", [8], [2.0], steps=[4], accepts=[[2, 2, 2, 1]], depths=[[5, 5, 7, 11]],
                   draft=[0.5], verify=[1.0]),
               rec(2, "y", [4], [1.0], steps=[2], accepts=[[2, 1]], depths=[[11, 5]], draft=[0.25], verify=[0.5])]
    base = [rec(1, "x", [4], [2.0]), rec(2, "y", [4], [2.0])]
    out = S.summarize({"vanilla": base, "ddd": records}, {"ddd": {"policy": "ddd", "max_depth": 11}})
    ddd = out["methods"]["ddd"]
    assert ddd["time"]["draft_share"] == pytest.approx(0.75 / 3)
    assert ddd["time"]["other_share"] == pytest.approx(0.75 / 3)
    assert ddd["early_stop_rate"] == pytest.approx(4 / 6, abs=1e-4)
    assert ddd["mean_depth"] == pytest.approx(44 / 6, abs=1e-4)
    assert ddd["depth_histogram"] == {5: 3, 7: 1, 11: 2}
    assert ddd["speedup"] == pytest.approx(4.0 / 2.0)
    assert ddd["categories"]["x"]["speedup"] == pytest.approx(2.0)
    assert ddd["categories"]["y"]["speedup"] == pytest.approx(2.0)
    assert out["methods"]["vanilla"]["speedup"] == pytest.approx(1.0)
    assert "exactness" in ddd and "exactness" not in out["methods"]["vanilla"]


def test_sampling_runs_report_no_exactness():
    base = [rec(1, "a", [4], [1.0])]
    out = S.summarize({"vanilla": base, "ddd": base}, greedy=False)
    assert out["exactness_reference"] is None and "exactness" not in out["methods"]["ddd"]
    assert out["exactness_note"] == "sampling"


def test_greedy_run_without_the_reference_method_says_so():
    from dyndepth.bench.report import main_table

    base = [rec(1, "a", [4], [1.0])]
    out = S.summarize({"ddd": base, "eagle2": base})
    assert out["exactness_reference"] is None and out["exactness_note"] == "no vanilla in this run"
    rows = main_table(out)
    assert "n/a (no vanilla in this run)" in rows[2] and "sampling" not in "".join(rows)


def test_balanced_selection_covers_categories():
    questions = read_questions(resolve_bench("mt_bench"))
    assert len(questions) == 80 and all(len(q.turns) == 2 for q in questions)
    picked = select_questions(questions, 8, "balanced")
    assert len({q.category for q in picked}) == 8
    assert select_questions(questions, 3, "first") == questions[:3]


def test_turns_keeps_each_questions_first_turns(tmp_path, capsys):
    _, picked = load_questions("mt_bench", 5, "balanced", turns=1)
    full = select_questions(read_questions(resolve_bench("mt_bench")), 5, "balanced")
    assert [q.question_id for q in picked] == [q.question_id for q in full]
    assert all(q.turns == f.turns[:1] for q, f in zip(picked, full))
    assert first_turns(full, None) == full and first_turns(full, 5) == full
    code = main(["bench", "--model", "none", "--turns", "0", "--methods", "vanilla", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--turns" in err


def test_bad_question_file_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "turns": []}) + "\n")
    code = main(["bench", "--model", "none", "--bench", str(bad), "--methods", "vanilla", "--out", str(tmp_path / "o")])
    # the file is only read at run time: resolve succeeds, reading fails before any model loads
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "turns" in err


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "vanilla,nope"], "nope"),
    (["--methods", "vanilla,vanilla"], "twice"),
    (["--set", "ddd.nope=1", "--methods", "ddd"], "nope"),
    (["--set", "ddd.threshold=abc", "--methods", "ddd"], "abc"),
    (["--bench", "no_such_bench"], "no_such_bench"),
    (["--sweep", "threshold", "--methods", "vanilla"], "KEY=V1"),
    (["--sweep", "nope=1,2"], "nope"),
    (["--max-new-tokens", "0"], "max-new-tokens"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    code = main(["bench", "--model", "smollm2-135m-instruct", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "\n" not in err and needle in err
    assert not out.exists()  # nothing ran


def test_sweep_grid_expands_and_clips_ddd_checks():
    from dyndepth.bench.sweep import expand, parse_grid

    grid = parse_grid(["threshold=-0.3,-0.6", "max_depth=7,11", "top_k=4"])
    plans = expand("ddd", grid)
    assert len(plans) == 4 and len({p.name for p in plans}) == 4
    assert plans[0].name == "ddd(threshold=-0.3,max_depth=7,top_k=4)"
    shallow = [p for p in plans if p.settings["max_depth"] == 7]
    assert all(p.settings["checks"] == (5,) for p in shallow)
    assert all(p.settings["checks"] == (5, 7, 9) for p in plans if p.settings["max_depth"] == 11)
    assert parse_grid(["checks=5/7/9,3:5"])["checks"] == [(5, 7, 9), (3, 5)]


def test_sweep_table_sorted_by_speedup(tmp_path):
    from dyndepth.bench.sweep import write_sweep

    summary = {"methods": {
        "vanilla": {"tokens_per_s": 10.0, "speedup": 1.0, "tau": 1.0, "mean_depth": None},
        "ddd(top_k=4)": {"tokens_per_s": 15.0, "speedup": 1.5, "tau": 2.0, "mean_depth": 5.0,
                         "exactness": {"matches": 2, "turns": 2}}}}
    run = {"model_id": "m", "bench": "mt_bench", "questions": 1, "params": {"max_new_tokens": 8}, "dtype": "float32",
           "machine": {"cpu": "cpu", "torch_threads": 1},
           "methods": {"vanilla": {}, "ddd(top_k=4)": {"policy": "ddd", "top_k": 4}}}
    md, csv_path, text = write_sweep(tmp_path, summary, run, ["top_k"])
    rows = csv_path.read_text().splitlines()
    assert rows[0].split(",")[:2] == ["method", "top_k"]
    assert rows[1].startswith("ddd(top_k=4),4,15.0,1.5") and rows[2].startswith("vanilla,,10.0,1.0")
    assert "| ddd(top_k=4) | 4 | 15.00 | 1.50 | 2.00 | 5.00 | – | 2/2 |" in text


def test_answer_question_feeds_back_own_first_answer(smollm2_path):
    from transformers import AutoTokenizer

    from dyndepth.bench.base import GenParams
    from dyndepth.bench.records import TurnResult
    from dyndepth.bench.runner import answer_question

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    seen = []

    class Echo:
        def generate(self, ids, params, seed):
            seen.append(ids)
            return TurnResult(tok.encode("ALPHA BRAVO") + [tok.eos_token_id], 0.1, 1)

    q = Question(7, "writing", ("first question", "second question"))
    turns = answer_question(Echo(), tok, q, GenParams(8), 0)
    assert [t.text for t in turns] == ["ALPHA BRAVO", "ALPHA BRAVO"]
    second = tok.decode(seen[1])
    assert "first question" in second and "ALPHA BRAVO" in second and "second question" in second
    assert second.index("ALPHA BRAVO") < second.index("second question")
