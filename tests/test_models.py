import json

import pytest
import torch

from qlass_lib.models import loading as models
from qlass_lib.core.config import ModelConfig


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_4bit_without_cuda_is_refused(tiny_tok):
    _, path = tiny_tok
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        models.load_model(str(path), ModelConfig(load_in_4bit=True))


def test_tiny_model_round_trips_through_auto_classes(tiny_tok):
    tok, path = tiny_tok
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    model = models.load_model(str(path), ModelConfig(device="cpu"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.eos_token == "<|end|>" and tok.chat_template


def test_missing_local_model_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        models.load_model(str(tmp_path / "missing"), ModelConfig())


def test_lora_adapter_save_and_load(tiny_tok, tmp_path):
    tok, path = tiny_tok
    cfg = ModelConfig(lora_r=4, device="cpu", bf16=False)
    model = models.load_model(str(path), cfg, train=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    model.eval()  # no LoRA dropout
    x = torch.tensor([[1, 2, 3, 4]])
    want = model(input_ids=x).logits
    out = models.save_policy(model, tok, tmp_path / "policy", str(path))
    assert models.is_adapter_dir(out) and (out / "adapter_model.safetensors").is_file()
    back, tok2 = models.load_policy(out, cfg)
    torch.testing.assert_close(back(input_ids=x).logits, want)
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # no pickle


def test_gradient_checkpointing_switch(tiny_tok):
    _, path = tiny_tok
    model = models.load_model(str(path), ModelConfig(gradient_checkpointing=True, device="cpu"), train=True)
    on = getattr(model, "is_activation_checkpointing", None)  # the name since transformers 5.2x
    assert (on if on is not None else model.is_gradient_checkpointing) is True


def test_char_ids_make_every_asin_character_one_token(tmp_path):
    """With model.tiny.char_ids an ASIN is the same per-character tokens on a page and inside click[...];
    other text keeps its BPE pieces, and decoding gives back the exact text."""
    from transformers import AutoTokenizer
    from qlass_lib.core.config import TinyModelConfig
    corpus = [f"[SEP] B0{i:02d}XYZ{i:03d} [SEP] cotton shirt, large\nclick[B0{i:02d}XYZ{i:03d}]" for i in range(60)]
    tiny = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, vocab_size=400)
    for char_ids in (False, True):
        tiny.char_ids = char_ids
        tok = AutoTokenizer.from_pretrained(str(models.build_tiny(tmp_path / str(char_ids), corpus, tiny)))
        ids = tok("Results [SEP] B06Y3VLDFB [SEP] cotton shirt\nclick[B06Y3VLDFB]")["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        assert tok.decode(ids) == "Results [SEP] B06Y3VLDFB [SEP] cotton shirt\nclick[B06Y3VLDFB]"
        if char_ids:
            assert pieces[pieces.index("B"):pieces.index("B") + 10] == list("B06Y3VLDFB")
            assert pieces[-11:] == list("B06Y3VLDFB") + ["]"]
            assert "Ġshirt" in pieces and "Ġcotton" in pieces  # ordinary words still merge
            assert tok.tokenize("B012XYZ012") == list("B012XYZ012")
        else:  # plain BPE merges pieces of the ids it was trained on
            assert len(tok.tokenize("B012XYZ012")) < 10
    assert models.id_char_pattern().count("|") == models.ASIN_LENGTH - 1


def test_bf16_only_where_the_cpu_runs_it_natively(monkeypatch):
    """bf16 autocast on a CPU only where it has bf16 instructions (AVX512_BF16, AMX): emulated bf16 is several
    times slower than fp32 (AVX-512 without AVX512_BF16: a LoRA step 2.0-2.7x, 4-row generation 2.4x).  What this machine computes in is recorded as the manifest's precision."""
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    flags = models.cpu_bf16_instructions()
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (flags is None or bool(flags))
    assert models.native_bf16(cpu) == native
    with models.autocast(ModelConfig(device="cpu"), cpu):
        assert (a @ a).dtype == (torch.bfloat16 if native else torch.float32)
    assert models.precision(ModelConfig(device="cpu")) == ("bf16" if native else
                                                           "fp32 (bf16 asked for; cpu has no native bf16)")
    assert models.precision(ModelConfig(device="cpu", bf16=False)) == "fp32"
    for supported in (False, True):
        monkeypatch.setattr(models, "native_bf16", lambda device, s=supported: s)
        with models.autocast(ModelConfig(device="cpu"), cpu):
            assert (a @ a).dtype == (torch.bfloat16 if supported else torch.float32)
        with models.autocast(ModelConfig(device="cpu", bf16=False), cpu):
            assert (a @ a).dtype == torch.float32
        split = ModelConfig(device="cpu", bf16_decoding=False)  # per phase: training in bf16, decoding in fp32
        with models.autocast(split, cpu):
            assert (a @ a).dtype == (torch.bfloat16 if supported else torch.float32)
        with models.autocast(split, cpu, decoding=True):
            assert (a @ a).dtype == torch.float32
        with models.autocast(ModelConfig(device="cpu"), cpu, decoding=True):
            assert (a @ a).dtype == (torch.bfloat16 if supported else torch.float32)
        assert models.precision(split, cpu) == ("bf16 (decoding fp32)" if supported else
                                                "fp32 (bf16 asked for; cpu has no native bf16)")


def test_cpu_bf16_needs_the_instructions_not_only_onednn(monkeypatch):
    """oneDNN reports bf16 support on AVX-512 CPUs without AVX512_BF16, where bf16 is emulated (slower than fp32)."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for flags, want in ((frozenset(), False), (frozenset({"avx512_bf16"}), True), (frozenset({"amx_bf16"}), True),
                        (None, True)):
        monkeypatch.setattr(models, "cpu_bf16_instructions", lambda f=flags: f)
        assert models.native_bf16(cpu) is want


def test_a_lora_policy_is_merged_once_into_a_servable_folder(tiny_tok, tmp_path):
    """vLLM serves full models: a LoRA policy is merged into its base beside it, with the same logits."""
    from qlass_lib.models.server import servable
    tok, path = tiny_tok
    cfg = ModelConfig(device="cpu", bf16=False, lora_r=4, lora_alpha=8)
    torch.manual_seed(0)
    policy = models.load_model(str(path), cfg, train=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    pdir = models.save_policy(policy, tok, tmp_path / "policy", str(path))
    assert servable(path) == path  # a full model is served as it is
    merged = servable(pdir)
    assert merged == tmp_path / "policy_merged" and (merged / "config.json").is_file()
    stamp = (merged / "model.safetensors").stat().st_mtime_ns
    assert servable(pdir) == merged and (merged / "model.safetensors").stat().st_mtime_ns == stamp  # once
    x = torch.tensor([tok("Action: look around")["input_ids"]])
    adapter, _ = models.load_policy(pdir, ModelConfig(device="cpu", bf16=False))
    full = models.load_model(str(merged), ModelConfig(device="cpu", bf16=False))
    with torch.no_grad():
        assert torch.allclose(adapter(x).logits, full(x).logits, atol=1e-4)
