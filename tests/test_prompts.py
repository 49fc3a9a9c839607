from qlass_lib.text import prompts


def test_parse_action_basic():
    assert prompts.parse_action("Thought: go outside.\nAction: go to outside") == "go to outside"
    assert prompts.parse_action("Action: open door to kitchen\nObservation: x") == "open door to kitchen"
    assert prompts.parse_action("action:   look around  ") == "look around"
    assert prompts.parse_action("Action: `focus on bee`") == "focus on bee"


def test_parse_action_missing_or_empty():
    assert prompts.parse_action("I think I will look around") is None
    assert prompts.parse_action("Action:   ") is None
    assert prompts.parse_action("") is None
    assert prompts.parse_action(None) is None


def test_parse_action_takes_first_action_line():
    assert prompts.parse_action("Action: a\nAction: b") == "a"


def test_agent_turn_round_trip():
    t = prompts.agent_turn("go to kitchen", "I need the kitchen.")
    assert t == "Thought: I need the kitchen.\nAction: go to kitchen"
    assert prompts.parse_action(t) == "go to kitchen"
    assert prompts.parse_thought(t) == "I need the kitchen."
    assert prompts.agent_turn("look around") == "Action: look around"


def test_state_structure_and_render(tiny_tok):
    tok, _ = tiny_tok
    s = prompts.initial_state("scienceworld", "Find a bee.", "You are in the hallway.")
    assert len(s) == 1 and s[0]["role"] == "user"
    assert "Task: Find a bee." in s[0]["content"] and "Observation: You are in the hallway." in s[0]["content"]
    s2 = prompts.extend(s, "Action: look around", "It is a hallway.")
    assert [m["role"] for m in s2] == ["user", "assistant", "user"]
    text = prompts.render(tok, s2, add_generation_prompt=True)
    assert text.endswith("<|assistant|>\n")
    assert text.index("Task: Find a bee.") < text.index("Action: look around") < text.index("It is a hallway.")


def test_fit_drops_oldest_turns_keeps_task_and_current(tiny_tok):
    tok, _ = tiny_tok
    s = prompts.initial_state("scienceworld", "Find a bee.", "start")
    for i in range(30):
        s = prompts.extend(s, f"Action: look around {i}", f"observation number {i} " * 5)
    full = len(tok(prompts.render(tok, s, True))["input_ids"])
    fitted = prompts.fit(tok, s, max_tokens=full // 3)
    assert fitted[0] == s[0] and fitted[-1] == s[-1]
    assert len(fitted) < len(s) and len(fitted) % 2 == 1
    assert len(tok(prompts.render(tok, fitted, True))["input_ids"]) <= full // 3
    ids = prompts.encode_prompt(tok, s, max_tokens=60, reserve=10)
    assert len(ids) <= 50
    for budget, reserve in [(full + 50, 32), (full // 2, 32), (full // 5, 0), (60, 10)]:  # encode = fit, then tokenize
        kept = prompts.fit(tok, s, budget, reserve)
        want = tok(prompts.render(tok, kept, True), add_special_tokens=False)["input_ids"][-(budget - reserve):]
        assert prompts.encode_prompt(tok, s, budget, reserve) == want


def test_fit_never_separates_an_agent_turn_from_its_observation(tiny_tok):
    """Regression: a window ending with an agent turn (BC example, QNet input) used to lose the observation
    that turn answers when the window was too long, teaching actions without their context."""
    tok, _ = tiny_tok
    s = prompts.initial_state("webshop", "Buy a lamp.", "search page")
    s = prompts.extend(s, "Action: search[lamp]", "results " + "B00LAMP " * 200)
    window = s + [{"role": "assistant", "content": "Action: click[B00LAMP]"}]
    fitted = prompts.fit(tok, window, max_tokens=50, add_generation_prompt=False)
    assert fitted == window  # nothing can be dropped without losing the current observation
    longer = prompts.extend(s, "Action: click[B00LAMP]", "item page " * 50) + [
        {"role": "assistant", "content": "Action: click[Buy Now]"}]
    fitted = prompts.fit(tok, longer, max_tokens=200, add_generation_prompt=False)
    assert fitted == [longer[0]] + longer[3:]  # the search turn and the long results page went, in one pair
    assert [m["role"] for m in fitted] == ["user", "assistant", "user", "assistant"]


def test_one_shot_example_goes_into_first_message():
    ex = [{"role": "user", "content": "Task: demo"}, {"role": "assistant", "content": "Action: look around"}]
    s = prompts.initial_state("scienceworld", "Real task", "obs", example=ex)
    c = s[0]["content"]
    assert c.index("Action: look around") < c.index("Task: Real task")
