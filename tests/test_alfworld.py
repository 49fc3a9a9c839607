"""ALFWorld: the game listing works on the shared data without the optional packages; the env itself needs
``pip install -e '.[alfworld]'`` and is skipped where that is not installed."""
from pathlib import Path

import pytest

from qlass_lib.envs.alfworld import game_dirs, task_type_of
from qlass_lib.envs.base import EnvError

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "alfworld"


@pytest.mark.skipif(not DATA.is_dir(), reason="shared ALFWorld data not present")
def test_game_listing_matches_the_paper_counts():
    seen, unseen = game_dirs(DATA, "dev"), game_dirs(DATA, "test")
    assert len(seen) == 140 and len(unseen) == 134  # ETO/QLASS valid_seen / valid_unseen
    listed = {l.strip() for l in (DATA / "game_lists" / "valid_unseen_134.txt").read_text().splitlines() if l.strip()}
    assert {str(p.relative_to(DATA)) for p in unseen} == listed
    types = {task_type_of(p) for p in unseen}
    assert types == {"pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
                     "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place"}


def test_missing_games_are_one_clear_error(tmp_path):
    with pytest.raises(EnvError, match="ALFWorld games not found"):
        game_dirs(tmp_path, "test")
    with pytest.raises(EnvError, match="train games not found"):
        game_dirs(tmp_path, "train", cache_dir=tmp_path / "cache")


def test_env_needs_its_packages_or_runs(tmp_path):
    from qlass_lib.envs.alfworld import ALFWorldEnv
    with pytest.raises(EnvError, match="data directory not found"):
        ALFWorldEnv(str(tmp_path / "nope"))
    try:
        import textworld  # noqa: F401
        import alfworld  # noqa: F401
    except ImportError:
        with pytest.raises(EnvError, match=r"pip install -e '\.\[alfworld\]'"):
            ALFWorldEnv(str(DATA if DATA.is_dir() else tmp_path))
        pytest.skip("alfworld/textworld not installed")
    from qlass_lib.envs import check_env
    env = ALFWorldEnv(str(DATA), max_turns=40)
    task = env.tasks("test")[0]
    report = check_env(env, task, env.gold_actions(task))
    assert report["final_score"] == 1.0
