import json

import pytest
import torch

from qlass_lib import models
from qlass_lib.config import ModelConfig


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
    assert model.is_gradient_checkpointing
