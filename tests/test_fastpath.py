"""The CPU fast path (``dyndepth.fastpath``) keeps decoding lossless, and spies prove it ran.

The existing exactness checks run on tiny targets whose model went through ``apply_fast_path`` (fused q/k/v and
gate/up, oneDNN-prepacked multi-row linears): speculative greedy output equals greedy ``generate`` of the same
fast-path model, and a sampling check keeps the target's distribution. Direct checks cover the pieces: the
upcast is exact, a fused sibling called on another input computes its own rows, parameters and state_dict are
unchanged, and the clean fallbacks.
"""

import pytest
import torch
import torch.nn.functional as F

import test_exactness_tiny
import test_sampling
import tiny_models
from dyndepth import fastpath
from dyndepth.errors import DyndepthError
from dyndepth.fastpath import FusedPart, PackedLinear, apply_fast_path, fast_path_calls
from dyndepth.kernels import half_gemm
from dyndepth.sampling import SamplingParams
from dyndepth.target import Target
from dyndepth.validate import OptionError

DDD = dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4), threshold=-0.3)


@pytest.fixture(autouse=True)
def one_thread():  # tiny models on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fast_models(monkeypatch):
    """Every tiny target built through tiny_models goes through apply_fast_path(fuse=True, pack=True); yields
    [(name, model)] of each one built."""
    made = []
    real = tiny_models.tiny_target

    def fast_target(arch, seed=0, dtype=torch.float32):
        model = real(arch, seed, dtype).model
        made.append((apply_fast_path(model, fuse=True, pack=True), model))
        return Target(model, tokenizer=None, **tiny_models.ENGINE)

    monkeypatch.setattr(tiny_models, "tiny_target", fast_target)
    yield made


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("policy,kwargs", [("ddd", DDD), ("plain", {})])
def test_greedy_matches_plain_greedy_on_the_fast_path(fast_models, arch, policy, kwargs):
    test_exactness_tiny.test_greedy_matches_transformers(arch, policy, kwargs)
    [(name, model)] = fast_models
    assert "fused qkv/gate-up" in name and "prepacked" in name
    assert any(isinstance(m, FusedPart) for m in model.modules())
    calls = fast_path_calls(model)
    assert calls["fused"] > 0 and calls["packed"] > 0  # prefill and trees are multi-row forwards


def test_default_fast_path_on_a_bf16_checkpoint(monkeypatch):
    """The default on a CPU without native bf16 matmul: a bf16 target computes in float32, head included, and
    speculative greedy output equals greedy generate of that model."""
    monkeypatch.setattr(fastpath, "native_half_matmul", lambda dtype: False)
    made = []
    real = tiny_models.tiny_target

    def bf16_target(arch, seed=0, dtype=torch.float32):
        model = real(arch, seed, torch.bfloat16).model
        made.append((apply_fast_path(model), model))
        return Target(model, tokenizer=None, **tiny_models.ENGINE)

    monkeypatch.setattr(tiny_models, "tiny_target", bf16_target)
    test_exactness_tiny.test_greedy_matches_transformers("qwen2", "ddd", DDD)
    [(name, model)] = made
    assert name == ("cpu: float32 compute (bfloat16 weights upcast: no native bfloat16 matmul on this CPU) + "
                    f"linears of up to {fastpath.HALF_READ_ROWS} rows read the half weights (native kernel)")
    assert fast_path_calls(model)["half_read"] > 0  # transformers' plain greedy steps and root-only trees


def test_a_bf16_head_reads_its_half_weights_beside_a_fast_path_target(monkeypatch, tmp_path):
    """A bf16 head checkpoint loaded for a target whose fast path reads half weights computes in float32 and reads
    its own half weights, and its draft logits read the target's half lm_head (over a draft vocabulary); greedy
    output still equals the target's greedy generate."""
    from dyndepth.decoder import SpeculativeDecoder, load_head
    from dyndepth.head import DraftHead, head_config
    from dyndepth.head.checkpoint import save_eagle

    monkeypatch.setattr(fastpath, "native_half_matmul", lambda dtype: False)
    model = tiny_models.tiny_target("qwen2", 0, torch.bfloat16).model
    apply_fast_path(model)
    target = Target(model, tokenizer=None)
    torch.manual_seed(1)
    head = DraftHead(head_config(target.config))
    head.set_draft_vocab(torch.arange(0, tiny_models.VOCAB, 2))  # even ids only
    save_eagle(head, tmp_path / "head")
    draft = load_head(str(tmp_path / "head"), "tiny", target)
    assert next(draft.parameters()).dtype == torch.float32
    assert fastpath.half_weight(draft.fc) is not None and fastpath.half_weight(draft.fc).dtype == torch.bfloat16
    dec = SpeculativeDecoder(target, draft, policy="ddd", drafter="head", **DDD)
    prompt = list(range(5, 17))
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0,
                              eos_token_id=None)[0, len(prompt):].tolist()
    out = dec.generate(prompt, max_new_tokens=24)
    assert out.token_ids == expected
    assert fast_path_calls(draft)["half_read"] > 0  # the head's own linears
    assert draft._target["draft_matmul"].half_calls > 0  # its logits on the target's half lm_head rows
    assert out.stats.steps < 24  # it drafted (some steps committed more than one token)


@pytest.mark.parametrize("native", [True, False], ids=["native-kernel", "inductor"])
def test_few_row_half_read_is_float32_math_on_the_half_weights(monkeypatch, native):
    """A matmul of up to half_read_rows() rows on the kept bf16 weight equals float32 math on its exact upcast
    (summation order aside), with the native kernel and with inductor's where the kernel is not built; more rows read
    the float32 weight; where inductor cannot compile either it warns once and reads float32."""
    if native:
        assert half_gemm.available(), half_gemm.why_not()  # CI's machines have AVX2 and a C compiler
    else:
        monkeypatch.setattr(half_gemm, "available", lambda: False)
    rows = fastpath.half_read_rows()
    assert rows == (fastpath.HALF_READ_ROWS if native else fastpath.INDUCTOR_ROWS)
    torch.manual_seed(0)
    half = (torch.randn(48, 40) * 0.1).to(torch.bfloat16)  # [N, K]
    weight, bias = half.float(), torch.randn(48)
    mm = fastpath.PackedMatmul(weight, bias, pack=False, half=half)
    x = torch.randn(1, 1, 40)
    torch.testing.assert_close(mm(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert mm.half_calls == 1 and mm(x).shape == (1, 1, 48)
    few = torch.randn(rows, 40)
    torch.testing.assert_close(mm(few), F.linear(few, weight, bias), rtol=1e-5, atol=1e-5)
    assert mm.half_calls == 3
    calls = mm.half_calls
    many = torch.randn(rows + 1, 40)
    assert torch.equal(mm(many), F.linear(many, weight, bias)) and mm.half_calls == calls
    if native:
        return
    def no_compiler(x, w):
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(fastpath, "_half_gemv", {"fn": no_compiler, "failed": False})
    with pytest.warns(RuntimeWarning, match="half-weight matmuls off .*InvalidCxxCompiler"):
        y = mm(x)
    assert torch.equal(y, F.linear(x, weight, bias)) and mm.half_calls == calls
    assert torch.equal(mm(x), y)  # no second try, no second warning


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 8, 37, 576])
def test_the_native_kernel_computes_each_row_alone(dtype, k):
    """half_gemm on odd shapes (k not a multiple of 8, n not of the block) equals float32 math on the upcast weight,
    and each row's result is bitwise the same whatever rows share the call: a token's logits do not depend on the
    tree or batch it is verified in."""
    assert half_gemm.available(), half_gemm.why_not()
    torch.manual_seed(k)
    w = (torch.randn(23, k) * 0.1).to(dtype)  # [N, K], N not a multiple of the kernel's 4-row block
    x = torch.randn(7, k)  # [M, K]: pairs of rows and an odd one
    y = half_gemm.half_gemm(x, w)
    torch.testing.assert_close(y, x @ w.float().T, rtol=1e-5, atol=1e-5)
    for i in range(7):
        assert torch.equal(half_gemm.half_gemm(x[i:i + 1], w), y[i:i + 1])
        assert torch.equal(half_gemm.half_gemm(x[max(0, i - 2):i + 1], w)[-1], y[i])
    with pytest.raises(ValueError, match="half_gemm"):
        half_gemm.half_gemm(x.double(), w)


def test_without_a_compiler_the_kernel_says_why(monkeypatch, tmp_path):
    """A machine without a working C compiler: the kernel is not available, the reason is one line, and the fast path
    falls back (to inductor's few-row kernel or float32)."""
    monkeypatch.setenv("DYNDEPTH_HOME", str(tmp_path))  # no cached build to reuse
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setattr(half_gemm, "_state", {"fn": None, "why": None})
    assert not half_gemm.available()
    assert "false failed" in half_gemm.why_not()
    assert fastpath.half_read_rows() == fastpath.INDUCTOR_ROWS
    monkeypatch.setattr(fastpath, "native_half_matmul", lambda dtype: False)
    model = tiny_models.tiny_target("llama", dtype=torch.bfloat16).model
    assert apply_fast_path(model).endswith("linears of up to 4 rows read the half weights (inductor kernel)")


def test_deep_accepted_paths_on_the_fast_path(fast_models):
    """An accepting oracle draft: whole 12-node trees verified and multi-token commits, fast path throughout."""
    test_exactness_tiny.test_greedy_matches_with_accepting_oracle_draft("llama", 0.0)
    assert fast_path_calls(fast_models[0][1])["packed"] > 0


toy_target = test_sampling.toy_target  # the module-scoped fixture of tests/test_sampling.py


@pytest.fixture(scope="module")
def fast_toy_target(toy_target):
    name = apply_fast_path(toy_target.model, fuse=True, pack=True)
    assert "fused" in name
    return Target(toy_target.model)


def test_sampling_keeps_the_target_distribution_on_the_fast_path(fast_toy_target):
    before = fast_path_calls(fast_toy_target.model)
    test_sampling.test_joint_distribution_of_first_tokens_matches_target(fast_toy_target,
                                                                         SamplingParams(temperature=1.0))
    after = fast_path_calls(fast_toy_target.model)
    assert after["fused"] > before["fused"] and after["packed"] > before["packed"]


# -- the pieces --------------------------------------------------------------------------------------------------
def test_fused_sibling_on_another_input_computes_its_own_rows():
    target = tiny_models.tiny_target("qwen2")
    attn = target.model.model.layers[0].self_attn
    apply_fast_path(target.model, fuse=True)
    x, other = torch.randn(1, 3, 64), torch.randn(1, 3, 64)
    with torch.no_grad():
        q = attn.q_proj(x)  # computes q, k and v of x
        k_other = attn.k_proj(other)  # not x: its own rows
        v = attn.v_proj(x)
        k = attn.k_proj(x)
        for got, mod, inp in ((q, attn.q_proj, x), (k_other, attn.k_proj, other), (v, attn.v_proj, x),
                              (k, attn.k_proj, x)):
            torch.testing.assert_close(got, F.linear(inp, mod.weight, mod.bias), rtol=1e-6, atol=1e-6)


def test_parameters_and_state_dict_are_unchanged():
    target = tiny_models.tiny_target("llama")
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    count = sum(p.numel() for p in target.model.parameters())
    apply_fast_path(target.model, fuse=True, pack=True)
    after = target.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(p.numel() for p in target.model.parameters()) == count
    assert any(isinstance(m, PackedLinear) for m in target.model.modules())  # o_proj, down_proj


def test_upcast_is_exact_and_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(fastpath, "native_half_matmul", lambda dtype: False)
    model = tiny_models.tiny_target("llama", dtype=torch.bfloat16).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = apply_fast_path(model)  # the defaults: the upcast and one-row half reads
    assert name == ("cpu: float32 compute (bfloat16 weights upcast: no native bfloat16 matmul on this CPU) + "
                    f"linears of up to {fastpath.HALF_READ_ROWS} rows read the half weights (native kernel)")
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k].float()) for k, v in after.items())
    kept = [m.matmul.half for m in model.modules() if isinstance(m, PackedLinear)]
    assert kept and all(h.dtype == torch.bfloat16 for h in kept)
    assert isinstance(model.get_output_embeddings(), PackedLinear)  # the lm_head reads its half weight too
    model = tiny_models.tiny_target("llama", dtype=torch.bfloat16).model
    assert apply_fast_path(model, half_read=False) == \
        "cpu: float32 compute (bfloat16 weights upcast: no native bfloat16 matmul on this CPU)"

    monkeypatch.setattr(fastpath, "native_half_matmul", lambda dtype: True)
    monkeypatch.setattr(fastpath, "half_packing", lambda dtype: False)
    model = tiny_models.tiny_target("llama", dtype=torch.bfloat16).model
    name = apply_fast_path(model, pack=True)  # native bf16: no upcast, and packing needs float32
    assert next(model.parameters()).dtype == torch.bfloat16
    assert name == "eager (no packing: it needs float32)"


def test_clean_fallbacks():
    meta = tiny_models.tiny_target("llama").model.to("meta")
    assert apply_fast_path(meta) == "eager (not a CPU model)"
    model = tiny_models.tiny_target("llama").model
    apply_fast_path(model, fuse=True)
    with pytest.raises(DyndepthError, match="already applied"):
        apply_fast_path(model)
    assert apply_fast_path(torch.nn.Linear(2, 2)) == "eager (nothing applies to this model)"
    float32 = tiny_models.tiny_target("llama").model
    assert apply_fast_path(float32) == "eager (nothing applies to this model)"  # the defaults on float32


@pytest.mark.parametrize("native", [False, True])
def test_from_pretrained_applies_it_and_says_what_ran(monkeypatch, capsys, smollm2_path, native):
    """A bf16 zoo model: float32 compute where the CPU has no bf16 matmul (else bf16 as loaded, on prepacked weights
    where this CPU really has one), named in describe() and in `generate --json`; fast_path=False keeps eager."""
    from dyndepth.cli import main
    from dyndepth.decoder import SpeculativeDecoder

    monkeypatch.setattr(fastpath, "native_half_matmul", lambda dtype: native)
    dec = SpeculativeDecoder.from_pretrained(str(smollm2_path), dtype="bfloat16", policy="plain")
    d = dec.describe()
    assert d["dtype"] == ("torch.bfloat16" if native else "torch.float32")
    packs = native and fastpath.half_packing(torch.bfloat16)  # what this CPU really has decides the packing
    assert d["forward"].startswith(("cpu: prepacked bfloat16" if packs else "eager (") if native
                                   else "cpu: float32 compute (bfloat16 weights upcast")
    off = SpeculativeDecoder.from_pretrained(str(smollm2_path), dtype="bfloat16", policy="plain", fast_path=False)
    assert off.describe()["forward"] == "eager (fast_path=False)" and off.target.dtype == torch.bfloat16
    assert main(["generate", "--model", str(smollm2_path), "--policy", "plain", "--prompt", "hi", "--threads", "1",
                 "--max-new-tokens", "2", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["forward"] == d["forward"]


def test_fast_path_pack_packs_the_multi_row_linears_and_stays_exact(monkeypatch, tiny_chat_model):
    """fast_path="pack" (bench --pack-linears): float32 weights reordered once for oneDNN; the trees' multi-row
    forwards run on them (a spy counts) and greedy output equals the eager model's."""
    from dyndepth.decoder import SpeculativeDecoder

    if not fastpath.mkldnn_packing_available():
        pytest.fail("this torch has no oneDNN weight packing")
    eager = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), "random", dtype="float32", policy="ddd",
                                               fast_path=False)
    packed = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), "random", dtype="float32", policy="ddd",
                                                fast_path="pack")
    assert "oneDNN-prepacked multi-row linears" in packed.describe()["forward"]
    prompts = [[5, 9, 200, 17], [300, 41, 7]]
    assert [o.token_ids for o in packed.generate(prompts, max_new_tokens=12, batch_size=2)] == \
        [eager.generate(p, max_new_tokens=12).token_ids for p in prompts]
    assert fast_path_calls(packed.target.model)["packed"] > 0
    with pytest.raises(OptionError, match="fast_path"):
        SpeculativeDecoder.from_pretrained(str(tiny_chat_model), dtype="float32", fast_path="fast")


def test_bf16_linears_run_on_prepacked_weights_where_the_cpu_multiplies_bf16():
    """On a CPU with a native bf16 matmul, a bf16 model's decoder linears and lm_head run on oneDNN-prepacked copies
    for every row count (one row included), with the same outputs as torch's own bf16 linear up to bf16 rounding,
    and the parameters untouched; elsewhere the float32 upcast runs instead and nothing is packed."""
    import copy

    model = tiny_models.tiny_target("llama", dtype=torch.bfloat16).model
    eager = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = apply_fast_path(model)
    linears = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    if not fastpath.half_packing(torch.bfloat16):  # no native bf16 matmul here: the upcast, never a bf16 packing
        assert name.startswith("cpu: float32 compute") and "prepacked" not in name
        assert all(fastpath.packed_matmul(m) is None for m in linears + [model.get_output_embeddings()])
        return
    assert name == "cpu: prepacked bfloat16 linears (oneDNN)"
    assert linears and all(fastpath.packed_matmul(m) is not None for m in linears)
    assert fastpath.packed_matmul(model.get_output_embeddings()) is not None
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in after.items())
    torch.manual_seed(0)
    for n in (1, 5):  # one row (plain decoding) and several (a tree)
        ids = torch.randint(0, model.config.vocab_size, (1, n))
        with torch.inference_mode():
            got, want = model(ids).logits.float(), eager(ids).logits.float()
        assert got.dtype == want.dtype and torch.allclose(got, want, atol=3e-2, rtol=3e-2), (got - want).abs().max()
    calls = sum(m.matmul.calls for m in model.modules() if isinstance(m, PackedLinear))
    assert calls == 2 * (len(linears) + 1)  # every linear and the lm_head, at both row counts
    off = tiny_models.tiny_target("llama", dtype=torch.bfloat16).model
    assert apply_fast_path(off, pack_half=False).startswith("eager (")


@pytest.mark.parametrize("subset", [False, True])
def test_a_bf16_head_runs_on_prepacked_weights_beside_a_packed_target(tmp_path, subset):
    """Where the target's bf16 linears are prepacked, a bf16 head's are too, and its draft logits run on the
    target's packed lm_head (shared) or on a packed copy of the draft vocabulary's rows; its draft logits stay
    those of the plain bf16 head up to bf16 rounding. Elsewhere the head keeps torch's own linears."""
    from dyndepth.decoder import SpeculativeDecoder, load_head
    from dyndepth.head import DraftHead, head_config
    from dyndepth.head.checkpoint import save_eagle

    model = tiny_models.tiny_target("qwen2", 0, torch.bfloat16).model
    apply_fast_path(model, upcast=False)
    target = Target(model, tokenizer=None)
    torch.manual_seed(1)
    head = DraftHead(head_config(target.config))
    if subset:
        head.set_draft_vocab(torch.arange(0, tiny_models.VOCAB, 2))  # even ids only
    save_eagle(head, tmp_path / "head")
    draft = load_head(str(tmp_path / "head"), "tiny", target)
    SpeculativeDecoder(target, draft, policy="ddd", drafter="head")  # binds the head to the target
    if not fastpath.half_packing(torch.bfloat16):
        assert fastpath.packed_matmul(target.lm_head) is None and fastpath.packed_matmul(draft.fc) is None
        assert draft._target["draft_matmul"] is None
        return
    assert fastpath.packed_matmul(draft.fc) is not None
    matmul = draft._target["draft_matmul"]
    assert (matmul is fastpath.packed_matmul(target.lm_head)) != subset  # shared whole, or its own packed rows
    hidden = torch.randn(3, target.config.hidden_size).to(torch.bfloat16)
    with torch.inference_mode():
        got = draft.logits(hidden).float()
        want = torch.nn.functional.linear(hidden, draft._target["draft_lm_head"]).float()
    assert got.shape == (3, draft.draft_vocab_size) and torch.allclose(got, want, atol=2e-2, rtol=2e-2)
    assert matmul.calls > 0
