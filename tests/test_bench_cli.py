"""End-to-end `dyndepth bench` on a tiny random Llama that uses SmolLM2's tokenizer and chat template:
real MT-bench prompts and the real CLI, with millisecond forwards (the whole run takes seconds)."""

import csv
import json

import pytest

from dyndepth.cli import main


@pytest.fixture(scope="module")
def bench_run(tiny_chat_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    code = main(["bench", "--model", str(tiny_chat_model), "--head", "random", "--bench", "mt_bench",
                 "--questions", "2", "--max-new-tokens", "16", "--methods", "vanilla,plain,ddd",
                 "--dtype", "float32", "--threads", "1", "--warmup-tokens", "4", "--out", str(out),
                 "--set", "ddd.total_tokens=24"])  # DDD's checks at 5, 7, 9 fit (float32's head-alone default is 4)
    return code, out


def test_bench_writes_answers_in_fastchat_shape(bench_run):
    code, out = bench_run
    assert code == 0
    for method in ("vanilla", "plain", "ddd"):
        lines = (out / "answers" / f"{method}.jsonl").read_text().splitlines()
        assert len(lines) == 2
        for line in lines:
            rec = json.loads(line)
            assert {"question_id", "category", "answer_id", "model_id", "method", "tstamp", "choices"} <= set(rec)
            assert rec["method"] == method
            choice = rec["choices"][0]
            for key in ("turns", "token_ids", "new_tokens", "wall_time", "steps", "accept_lengths", "depths"):
                assert len(choice[key]) == 2, key  # MT-bench: both turns
            assert choice["new_tokens"] == [len(ids) for ids in choice["token_ids"]]
            assert all(1 <= n <= 16 for n in choice["new_tokens"])
            assert all(t > 0 for t in choice["wall_time"])
            if method == "ddd":
                assert all(d in (5, 7, 9, 11) for per_turn in choice["depths"] for d in per_turn)
                assert all(len(a) == s for a, s in zip(choice["accept_lengths"], choice["steps"]))


def test_bench_summary_fields_and_exactness(bench_run):
    _, out = bench_run
    doc = json.loads((out / "summary.json").read_text())
    run, summary = doc["run"], doc["summary"]
    assert run["machine"]["torch_threads"] == 1 and run["machine"]["cores"] >= 1 and run["machine"]["cpu"]
    assert run["dtype"] == "float32" and run["turns"] == 4 and run["head"].startswith("random")
    assert run["methods"]["ddd"]["threshold"] == -0.3 and run["methods"]["ddd"]["checks"] == [5, 7, 9]
    assert summary["baseline"] == "vanilla"
    methods = summary["methods"]
    assert set(methods) == {"vanilla", "plain", "ddd"}
    assert methods["vanilla"]["speedup"] == pytest.approx(1.0)
    for name, st in methods.items():
        assert st["tokens_per_s"] > 0 and st["turns"] == 4
        assert st["tau"] >= 1.0
        shares = st["time"]
        assert sum(shares[k] for k in ("prefill_share", "draft_share", "verify_share", "other_share")) == \
            pytest.approx(1.0, abs=1e-3)
        assert set(st["categories"]) == set(summary["categories"]) and len(summary["categories"]) == 2
    assert methods["ddd"]["mean_depth"] >= 5 and methods["ddd"]["time"]["draft_share"] > 0
    # greedy float32: the speculative outputs equal vanilla's token for token, reported k of N
    for name in ("plain", "ddd"):
        assert methods[name]["exactness"] == {"matches": 4, "turns": 4, "reference": "vanilla"}
    md = (out / "summary.md").read_text()
    assert "| ddd |" in md and "4/4" in md and "torch threads 1" in md and "threshold=-0.3" in md


def test_bench_plots_written(bench_run):
    _, out = bench_run
    for name in ("speedup.png", "depths.png", "accept_lengths.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_bench_sweep_writes_table(tiny_chat_model, tmp_path):
    out = tmp_path / "sweep"
    code = main(["bench", "--model", str(tiny_chat_model), "--head", "random", "--bench", "humaneval",
                 "--questions", "1", "--max-new-tokens", "6", "--methods", "plain", "--dtype", "float32",
                 "--threads", "1", "--warmup", "0", "--no-plots", "--out", str(out),
                 "--sweep", "top_k=2,4", "total_tokens=6", "--sweep-method", "eagle2-cpu"])
    assert code == 0
    rows = list(csv.reader((out / "sweep.csv").read_text().splitlines()))
    assert rows[0][:5] == ["method", "top_k", "total_tokens", "tokens_per_s", "speedup"]
    names = sorted(r[0] for r in rows[1:])
    assert names == sorted(["vanilla", "plain", "eagle2-cpu(top_k=2,total_tokens=6)",
                            "eagle2-cpu(top_k=4,total_tokens=6)"])
    assert "| vanilla |" in (out / "sweep.md").read_text()
    assert not (out / "plots").exists()


def test_every_tree_method_in_the_registry_runs_and_is_exact_in_float32(tiny_chat_model, tmp_path):
    from dyndepth.bench.methods import METHODS

    tree = [name for name in METHODS if name not in ("vanilla", "assisted", "vllm", "vllm-ngram")]
    assert {"plain", "eagle2", "eagle2-cpu", "ddd", "ddd-cpu"} <= set(tree)
    out = tmp_path / "all"
    code = main(["bench", "--model", str(tiny_chat_model), "--head", "random", "--questions", "1",
                 "--max-new-tokens", "8", "--methods", ",".join(["vanilla", *tree]), "--dtype", "float32",
                 "--threads", "1", "--warmup", "0", "--no-plots", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["run"]["methods"]["ddd-cpu"]["top_k"] == 4 and doc["run"]["methods"]["ddd-cpu"]["total_tokens"] == 12
    for name in tree:
        assert doc["summary"]["methods"][name]["exactness"]["matches"] == 2, name


def test_assisted_is_skipped_for_a_non_qwen_target(tiny_chat_model, tmp_path, capsys):
    out = tmp_path / "assisted"
    code = main(["bench", "--model", str(tiny_chat_model), "--questions", "1", "--max-new-tokens", "4",
                 "--methods", "vanilla,assisted", "--dtype", "float32", "--threads", "1", "--warmup", "0",
                 "--no-plots", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "summary.json").read_text())
    assert "Qwen" in doc["run"]["skipped"]["assisted"] and list(doc["summary"]["methods"]) == ["vanilla"]
    assert "skipping assisted" in capsys.readouterr().err


def test_missing_head_for_a_model_directory_is_a_one_line_error(tiny_chat_model, tmp_path, capsys):
    code = main(["bench", "--model", str(tiny_chat_model), "--questions", "1", "--methods", "vanilla,ddd",
                 "--dtype", "float32", "--threads", "1", "--warmup", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error:") and "--head random" in err[-1]
