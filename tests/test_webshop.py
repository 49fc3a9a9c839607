"""WebShop: reward on hand-made products and goals, env checker, expert success, invalid actions, HTTP client."""
from pathlib import Path

import pytest

from qlass_lib.envs import TaskRef, check_env
from qlass_lib.envs.base import EnvError
from qlass_lib.envs.webshop_reward import purchase_reward, type_reward

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "webshop"

PRODUCT = {"asin": "B000TEST01", "name": "Organic Green Tea Bags", "Title": "Organic Green Tea Bags, 100 count",
           "query": "green tea", "product_category": "Grocery › Beverages › Tea › Green",
           "Attributes": ["caffeine free", "organic"], "BulletPoints": ["non gmo and gluten free"],
           "Description": "Smooth taste.", "options": {"size": ["50 count", "100 count"]}, "pricing": [12.0]}
GOAL = {"asin": "B000TEST01", "name": "Organic Green Tea Bags", "query": "green tea",
        "product_category": "Grocery › Beverages › Tea › Green", "attributes": ["organic", "gluten free"],
        "goal_options": {"size": "100 count"}, "price_upper": 20.0}


def test_reward_full_match():
    r = purchase_reward(PRODUCT, 12.0, {"size": "100 count"}, GOAL)
    assert r["reward"] == 1.0 and r["attribute_matches"] == 2 and r["option_matches"] == 1 and r["r_price"] == 1


def test_reward_partial_credit_by_hand():
    # wrong option, too expensive: (2 attrs + 0 options + 0 price) / (2 + 1 + 1) = 0.5
    r = purchase_reward(PRODUCT, 25.0, {"size": "50 count"}, GOAL)
    assert r["reward"] == pytest.approx(0.5)
    # no option chosen, price ok: (2 + 0 + 1) / 4
    assert purchase_reward(PRODUCT, 12.0, {}, GOAL)["reward"] == pytest.approx(0.75)


def test_reward_type_penalties():
    other = dict(PRODUCT, name="Stainless Steel Kitchen Knife", Title="Stainless Steel Kitchen Knife", query="knives",
                 product_category="Home › Kitchen › Knives")
    t = type_reward(other, GOAL)
    assert t["title_score"] == 0.0 and t["r_type"] == 0.0
    assert purchase_reward(other, 12.0, {"size": "100 count"}, GOAL)["reward"] == 0.0
    half = dict(other, name="Green Kitchen Knife", query="knives")  # 1 of 6 goal words, no query/category match
    assert type_reward(half, dict(GOAL, name="Organic Green Tea Bags Large Box"))["r_type"] == 0.5


@pytest.fixture(scope="module")
def ws():
    if not DATA.is_dir():
        pytest.skip("shared WebShop data not present")
    from qlass_lib.envs.webshop import WebShopEnv
    return WebShopEnv(str(DATA), max_turns=10)


def test_catalog_goals_and_splits(ws):
    kinds = {(t.task_type, s) for s in ("train", "dev", "test") for t in ws.tasks(s)}
    assert ("webshop", "train") in kinds and ("webshop-human", "test") in kinds
    assert not ({t for t in ws.tasks("train")} & {t for t in ws.tasks("test")})
    train_asins = {ws.cat.goals[t.variation]["asin"] for t in ws.tasks("train")}
    test_asins = {ws.cat.goals[t.variation]["asin"] for t in ws.tasks("test") if t.task_type == "webshop"}
    assert not train_asins & test_asins  # split by product
    assert len(ws.tasks("test")) - len([t for t in ws.tasks("test") if t.task_type == "webshop"]) == 13


def test_checker_and_expert_success(ws):
    sample = ws.tasks("train")[:25] + ws.tasks("test")[-5:]
    rewards = []
    for t in sample:
        acts = ws.gold_actions(t)
        report = check_env(ws, t, acts)
        rewards.append(report["final_score"])
    rate = sum(r >= 0.999 for r in rewards) / len(rewards)
    print(f"WebShop scripted expert: full reward on {rate:.0%} of {len(rewards)} goals")
    assert rate >= 0.9


def test_invalid_actions_are_observations(ws):
    t = ws.tasks("dev")[0]
    ws.reset(t)
    for bad in ["buy it", "click[Buy Now]", "click[nonexistent]", "search[]"]:
        s = ws.step(bad)
        assert not s.done and s.observation.startswith("Invalid action") and "[SEP]" in s.observation
    s = ws.step("search[tea]")
    assert "Page 1" in s.observation
    s = ws.step("search[again]")
    assert s.observation.startswith("Invalid action: search only works on the search page")


def test_navigation_and_pages(ws):
    t = ws.tasks("test")[0]
    ws.reset(t)
    s = ws.step("search[shoes]")
    assert "Next >" in s.observation and "< Prev" not in s.observation
    s = ws.step("click[Next >]")
    assert "Page 2" in s.observation and "< Prev" in s.observation
    import re
    asin = next(a[6:-1] for a in ws.valid_actions() if re.fullmatch(r"click\[[A-Z0-9]{10}\]", a))
    s = ws.step(f"click[{asin}]")
    assert "Buy Now" in s.observation
    s = ws.step("click[Features]")
    assert "< Prev" in s.observation
    s = ws.step("click[< Prev]")
    assert "Buy Now" in s.observation
    s = ws.step("click[Back to Search]")
    assert s.observation.endswith("Search")


def test_missing_data_dir_is_one_clear_error(tmp_path):
    from qlass_lib.envs.webshop import WebShopEnv
    with pytest.raises(EnvError, match="WebShop data directory not found"):
        WebShopEnv(str(tmp_path / "nope"))
    with pytest.raises(EnvError, match="missing"):
        WebShopEnv(str(tmp_path))


class _FakeOfficialServer:
    """Serves pages shaped like the official web_agent_site app (buttons, option labels, product links,
    the reward block) from our catalog, on 127.0.0.1 only, for testing the HTTP client."""

    def __init__(self, ws):
        import html
        import json as _json
        import threading
        import urllib.parse
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from qlass_lib.envs.webshop import _price
        cat = ws.cat

        def page(body):
            return f"<html><head><title>WebShop</title></head><body>{body}</body></html>"

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                parts = [urllib.parse.unquote(p) for p in self.path.strip("/").split("/")]
                goal = cat.goals[int(parts[-1].split("_")[-1])] if len(parts) == 1 else None
                esc = html.escape
                if len(parts) == 1:
                    body = f"<h4>Instruction:<br>{esc(goal['instruction_text'])}</h4><button>Search</button>"
                elif parts[0] == "search_results":
                    res = cat.search(parts[2])
                    p = int(parts[3])
                    body = "<button>Back to Search</button>" + f"<h5>Page {p} (Total results: {len(res)})</h5>"
                    body += "<button>Next &gt;</button>" if p * 10 < len(res) else ""
                    for a in res[(p - 1) * 10:p * 10]:
                        body += f"<a class='product-link' href='#'>{a}</a><h4>{esc(cat.products[a]['Title'])}</h4>"
                elif parts[0] == "item_page":
                    prod = cat.products[parts[2]]
                    body = "<button>Back to Search</button><button>&lt; Prev</button>"
                    for name, vals in sorted((prod.get("options") or {}).items()):
                        body += f"<h4>{esc(name)}</h4>" + "".join(f"<input type='radio'><label>{esc(str(v))}</label>" for v in vals)
                    body += f"<h2>{esc(prod['Title'])}</h2><button>Description</button><button>Buy Now</button>"
                elif parts[0] == "item_sub_page":
                    body = f"<button>Back to Search</button><button>&lt; Prev</button><p>{esc(cat.products[parts[2]]['Description'])}</p>"
                elif parts[0] == "done":
                    prod = cat.products[parts[2]]
                    r = purchase_reward(prod, _price(prod), _json.loads(parts[3]), self.server.goal)
                    body = f"<h1>Thank you for shopping with us!</h1><h3 id='reward'>Your score (min 0.0, max 1.0)<pre>{r['reward']}</pre></h3>"
                if goal is not None:
                    self.server.goal = goal
                data = page(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_client_against_an_official_style_server(ws):
    from qlass_lib.envs.webshop import _price
    from qlass_lib.envs.webshop_http import WebShopHTTPEnv
    srv = _FakeOfficialServer(ws)
    try:
        task = next(t for t in ws.tasks("test") if ws.cat.goals[t.variation]["goal_options"])
        goal = ws.cat.goals[task.variation]
        env = WebShopHTTPEnv(srv.url, {"test": [task.variation]}, max_turns=10, timeout=10)
        assert env.tasks("test") == [TaskRef("webshop", task.variation)]
        first = env.reset(TaskRef("webshop", task.variation))
        assert goal["instruction_text"] in first.task_text
        acts = ws.gold_actions(task)
        steps = [env.step(a) for a in acts]
        assert steps[-1].done and steps[-1].reward == pytest.approx(1.0)
        assert steps[-1].info["purchase"]["options"] == {k: v for k, v in goal["goal_options"].items()}
        env.reset(TaskRef("webshop", task.variation))
        assert env.step("click[Buy Now]").observation.startswith("Invalid action")
        prod = ws.cat.products[goal["asin"]]
        assert purchase_reward(prod, _price(prod), goal["goal_options"], goal)["reward"] == 1.0
    finally:
        srv.close()


def test_failure_steps_of_hand_made_episodes(ws):
    """Each script step a policy can miss is named on a hand-made action list (replayed, deterministic)."""
    from qlass_lib.analysis.webshop_failures import classify, failure_table
    task = next(t for t in ws.tasks("dev") if ws.cat.goals[t.variation]["goal_options"])
    gold = ws.gold_actions(task)
    n_opts = len(ws.cat.goals[task.variation]["goal_options"])
    results = ws.cat.search(gold[0][len("search["):-1])
    other = next(a for a in results[:10] if a != ws.cat.goals[task.variation]["asin"])
    cases = {"goal bought": gold, "no Buy Now": gold[:-1], "wrong options": gold[:-1 - n_opts] + gold[-1:],
             "no search": ["click[Buy Now]"], "bad search": ["search[zzqx]"],
             "no product opened": [gold[0], "click[B000000000]", None],
             "wrong product": [gold[0], f"click[{other}]", "click[Buy Now]"]}
    for where, actions in cases.items():
        assert classify(ws, task, actions)["failed_at"] == where, (where, actions)
    assert classify(ws, task, cases["no product opened"])["invalid_id_clicks"] == 1
    episodes = [{"task_type": task.task_type, "variation": task.variation, "reward": 0.0,
                 "turns": [{"action": a} for a in actions]} for actions in cases.values()]
    per, counts = failure_table(ws, episodes)
    assert list(per.failed_at) == list(cases)
    assert counts.set_index("task_type").loc["all", list(cases)].tolist() == [1] * len(cases)
