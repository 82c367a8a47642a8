#!/usr/bin/env bash
# The suffix / hybrid drafting benchmark of issue 26, one stage per call (each holds the timing lock; a stage whose
# summary.json exists is skipped, so the sequence can be resumed):
#
#   scripts/suffix_bench.sh sets          # the tune / report question files (no timing; SPEC_BENCH=path of
#                                         # spec_bench_tune.jsonl, default ../shared/data/spec_bench_tune.jsonl)
#   scripts/suffix_bench.sh smol-tune     # SmolLM2-135M on the tuning half, drafters and policies compared
#   scripts/suffix_bench.sh smol-report   # SmolLM2-135M on the report half
#   scripts/suffix_bench.sh qwen-tune     # Qwen2.5-Coder-1.5B on 2 tuning questions per category
#   scripts/suffix_bench.sh qwen-report   # Qwen2.5-Coder-1.5B, report half: all nine categories (EXTRA="--questions 18": 2 each)
#   scripts/suffix_bench.sh qwen-report-a # Qwen2.5-Coder-1.5B, report half: Spec-Bench's five categories
#   scripts/suffix_bench.sh qwen-report-b # Qwen2.5-Coder-1.5B, report half: MT-bench, HumanEval, code edits, quote chats
#
# METHODS replaces a stage's methods; SWEEP (tune stages) its auto sweep ("" for none); TUNE_OUT / REPORT_OUT the
# smol-tune / smol-report and qwen-report stages' output folder (a rerun beside an earlier one).
# EXTRA adds bench options to a stage (e.g. EXTRA="--questions 27" for 3 questions per category).
# Every run: bf16, 2 torch threads, greedy, 128 new tokens, vanilla in the same run (the speedup baseline), one
# warm-up answer per method, methods interleaved per question in rotating order (dyndepth bench's protocol).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
Q=docs/results/suffix-bench/questions
LOCK=/tmp/dyndepth-timing.lock
COMMON=(--max-new-tokens 128 --dtype bfloat16 --threads 2 --no-plots)
REPORT_METHODS=vanilla,ddd,suffix,hybrid,prompt-lookup,switch

run() {  # run OUT ARGS...: one bench run under the lock, skipped when done
    local out=$1; shift
    if [[ -f $out/summary.json ]]; then echo "$out: done, skipped"; return; fi
    mkdir -p "$out"
    # shellcheck disable=SC2086  # EXTRA is a list of options, split on purpose
    flock "$LOCK" bash -c 'uptime; "$@"; uptime' _ "$PY" -m dyndepth.cli bench "$@" "${COMMON[@]}" ${EXTRA:-} --out "$out" \
        2> >(tee "$out/stderr.log" >&2) | tee "$out/stdout.log"
}

case "${1:-}" in
    sets) $PY scripts/suffix_bench_sets.py "${SPEC_BENCH:-../shared/data/spec_bench_tune.jsonl}" $Q ;;
    smol-tune)
        run ${TUNE_OUT:-docs/results/suffix-smol-tune} --model smollm2-135m-instruct --bench $Q/tune.jsonl \
            --methods "${METHODS:-vanilla,ddd,prompt-lookup,suffix,hybrid,switch}" ${SWEEP---sweep-method auto --sweep drafter=suffix,hybrid} ;;
    smol-report)
        run ${REPORT_OUT:-docs/results/suffix-smol-report} --model smollm2-135m-instruct --bench $Q/report.jsonl \
            --methods "${METHODS:-$REPORT_METHODS}" ${SETS:-} ;;
    qwen-tune)
        run docs/results/suffix-qwen-tune --model qwen2.5-coder-1.5b-instruct --bench $Q/tune.jsonl --questions 18 \
            --methods vanilla,ddd,prompt-lookup,suffix,hybrid,switch --sweep-method auto --sweep drafter=suffix,hybrid ;;
    qwen-report)
        run ${REPORT_OUT:-docs/results/suffix-qwen-report} --model qwen2.5-coder-1.5b-instruct --bench $Q/report.jsonl \
            --methods "${METHODS:-$REPORT_METHODS}" ${SETS:-} ;;
    qwen-report-a)
        run docs/results/suffix-qwen-report-a --model qwen2.5-coder-1.5b-instruct --bench $Q/report-a.jsonl \
            --methods "${METHODS:-$REPORT_METHODS}" ${SETS:-} ;;
    qwen-report-b)
        run docs/results/suffix-qwen-report-b --model qwen2.5-coder-1.5b-instruct --bench $Q/report-b.jsonl \
            --methods "${METHODS:-$REPORT_METHODS}" ${SETS:-} ;;
    *) echo "usage: $0 sets|smol-tune|smol-report|qwen-tune|qwen-report|qwen-report-a|qwen-report-b" >&2; exit 2 ;;
esac
