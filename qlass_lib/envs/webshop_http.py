"""Client adapter for a running official WebShop server (``web_agent_site``) over HTTP, for users with the
full catalog.  It drives the server's page routes and flattens each HTML page into the same text form as
:class:`~qlass_lib.envs.webshop.WebShopEnv` (buttons, option labels and product links separated by [SEP]).

Routes used (those of the official Flask app): ``/{session}``, ``/search_results/{session}/{query}/{page}``,
``/item_page/{session}/{asin}/{query}/{page}/{options}``,
``/item_sub_page/{session}/{asin}/{query}/{page}/{sub_page}/{options}``, ``/done/{session}/{asin}/{options}``.
The task variation is the server's goal (session) index, as in ETO's ``test_indices.json``.
"""
from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request

from qlass_lib.envs.base import EnvError, Reset, TaskRef, TextEnv
from qlass_lib.envs.webshop import SEP

SUB_PAGES = {"description": "Description", "features": "Features", "reviews": "Reviews", "attributes": "Attributes"}


def flatten(html: str) -> tuple[list[str], dict]:
    """Visible text pieces of a page, plus clickable things: buttons, option labels (with their option
    name), product links, and the reward when the page shows one."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(html, "html.parser")
    for t in soup(["script", "style", "head", "title", "meta"]):
        t.decompose()
    pieces, info = [], {"buttons": [], "options": {}, "asins": []}
    last_plain = ""
    for node in soup.find_all(string=True):
        text = " ".join(str(node).split())
        if not text:
            continue
        parent = node.parent
        if parent.name == "button" or (parent.name == "input" and parent.get("type") == "submit"):
            info["buttons"].append(text)
        elif parent.name == "label":
            info["options"][text] = last_plain
        elif "product-link" in (parent.get("class") or []):
            info["asins"].append(text)
        else:
            last_plain = text
        pieces.append(text)
    joined = " ".join(pieces)
    m = re.search(r"Your score \(min 0\.0, max 1\.0\)\s*([\d.]+)", joined)
    if m:
        info["reward"] = float(m.group(1))
    return pieces, info


class WebShopHTTPEnv(TextEnv):
    name = "webshop"

    def __init__(self, base_url: str, goal_ids: dict[str, list[int]] | None = None, max_turns: int = 10,
                 timeout: float = 30.0):
        super().__init__(max_turns)
        self.base = base_url.rstrip("/")
        self.goal_ids = goal_ids or {}
        self.timeout = timeout
        self.s: dict = {}

    def tasks(self, split: str) -> list[TaskRef]:
        if split not in self.goal_ids:
            raise EnvError(f"no goal ids for split {split!r}: pass goal_ids (e.g. ETO's test_indices.json)")
        return [TaskRef("webshop", int(i)) for i in self.goal_ids[split]]

    def _get(self, *parts) -> tuple[list[str], dict]:
        url = self.base + "/" + "/".join(urllib.parse.quote(str(p), safe="") for p in parts)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                html = r.read().decode("utf-8", "replace")
        except OSError as exc:
            raise EnvError(f"WebShop server at {self.base} did not answer: {exc}") from exc
        pieces, info = flatten(html)
        self.s["info"] = info
        return pieces, info

    def _obs(self, pieces: list[str]) -> str:
        return SEP.join(pieces)

    def _reset(self, task: TaskRef) -> Reset:
        self.s = {"session": f"fixed_{task.variation}", "page": "init"}
        pieces, _ = self._get(self.s["session"])
        text = " ".join(pieces)
        m = re.search(r"Instruction:\s*(.*?)(?:\s+Search\s*$|$)", text)
        return Reset(m.group(1) if m else text, self._obs(pieces))

    def _opts(self) -> str:
        return json.dumps(self.s.get("options", {}))

    def _step(self, action: str):
        m = re.fullmatch(r"\s*(search|click)\s*\[(.*)\]\s*", action, flags=re.IGNORECASE | re.DOTALL)
        if not m:
            return "Invalid action. Use search[query] or click[button].", 0.0, False, {}
        verb, arg = m.group(1).lower(), m.group(2).strip()
        s, sess, low = self.s, self.s["session"], arg.lower()
        info = s.get("info", {})
        if verb == "search":
            if s["page"] != "init":
                return "Invalid action: search only works on the search page.", 0.0, False, {}
            s.update(page="search", query=arg, num=1, options={})
            pieces, _ = self._get("search_results", sess, arg, 1)
        elif low == "back to search":
            s.update(page="init", options={})
            pieces, _ = self._get(sess)
        elif low == "next >" and s["page"] == "search":
            s["num"] += 1
            pieces, _ = self._get("search_results", sess, s["query"], s["num"])
        elif low == "< prev" and s["page"] in ("search", "item", "item_sub"):
            if s["page"] == "search":
                s["num"] = max(1, s["num"] - 1)
                pieces, _ = self._get("search_results", sess, s["query"], s["num"])
            elif s["page"] == "item":
                s.update(page="search", options={})
                pieces, _ = self._get("search_results", sess, s["query"], s["num"])
            else:
                s["page"] = "item"
                pieces, _ = self._get("item_page", sess, s["asin"], s["query"], s["num"], self._opts())
        elif s["page"] == "item" and low == "buy now":
            pieces, done_info = self._get("done", sess, s["asin"], self._opts())
            r = float(done_info.get("reward", 0.0))
            return self._obs(pieces), r, True, {"purchase": {"asin": s["asin"], "options": s.get("options", {})}}
        elif s["page"] == "item" and low in SUB_PAGES:
            s.update(page="item_sub", sub=SUB_PAGES[low])
            pieces, _ = self._get("item_sub_page", sess, s["asin"], s["query"], s["num"], s["sub"], self._opts())
        elif s["page"] == "search" and low in {a.lower() for a in info.get("asins", [])}:
            asin = next(a for a in info["asins"] if a.lower() == low)
            s.update(page="item", asin=asin, options={})
            pieces, _ = self._get("item_page", sess, asin, s["query"], s["num"], self._opts())
        elif s["page"] == "item" and low in {o.lower() for o in info.get("options", {})}:
            label = next(o for o in info["options"] if o.lower() == low)
            s.setdefault("options", {})[info["options"][label]] = label
            pieces, _ = self._get("item_page", sess, s["asin"], s["query"], s["num"], self._opts())
        else:
            return f"Invalid action: there is no button '{arg}' here.", 0.0, False, {}
        return self._obs(pieces), 0.0, False, {}
