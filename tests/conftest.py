import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_tok(tmp_path_factory):
    """A byte-level BPE tokenizer trained locally, with the project's chat template."""
    from qlass_lib.core.config import TinyModelConfig
    from qlass_lib.models.loading import build_tiny, load_tokenizer
    from qlass_lib.core.config import ModelConfig
    corpus = ["Action: look around", "Observation: This room is called the kitchen.", "Action: go to outside",
              "Task: find the animal with the longest life span", "Thought: I should look."] * 20
    d = build_tiny(tmp_path_factory.mktemp("tiny"), corpus,
                   TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400))
    return load_tokenizer(str(d), ModelConfig()), d


@pytest.fixture(scope="session")
def sciworld():
    from qlass_lib.envs.scienceworld import ScienceWorldEnv
    env = ScienceWorldEnv(["lifespan-longest-lived", "find-non-living-thing"], max_turns=12)
    yield env
    env.close()
