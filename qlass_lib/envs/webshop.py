"""WebShop text environment, the project's own implementation, on the real 1,000-product catalog.

Pages and actions follow WebShop's text mode: ``search[query]`` on the search page; ``click[...]`` on a
button (a product id, ``Next >``, ``< Prev``, ``Back to Search``, an option value, ``Description``,
``Features``, ``Reviews``, ``Buy Now``).  Search is BM25 (``bm25s``) over the products' search text, top 50,
10 per page.  Buying ends the episode with WebShop's reward (:mod:`.webshop_reward`).

Data directory (``env.data_dir``, never committed): ``resources_1k_documents.jsonl`` (processed products),
``items_ins_v2_1000.json`` (attributes and synthetic instructions).  Goals: synthetic goals (one per product
instruction x option combination, at most ``options_per_product``, price cap drawn as in WebShop) and the
human goals attached to catalog products.  Splits are by product (hash of the ASIN): ~10% test, ~10% dev,
the rest train; human goals are all in test.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from qlass_lib.envs.base import EnvError, Reset, TaskRef, TextEnv
from qlass_lib.envs.webshop_reward import purchase_reward

PAGE = 10
TOP_K = 50
SEP = " [SEP] "
_FILES = ("resources_1k_documents.jsonl", "items_ins_v2_1000.json")


def _split_of(asin: str) -> str:
    h = int(hashlib.sha256(asin.encode()).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def _price(product: dict) -> float:
    p = product.get("pricing") or [0.0]
    return float(min(p))


@dataclass
class Catalog:
    products: dict[str, dict]
    goals: list[dict]
    retriever: object
    asins: list[str]

    @classmethod
    def load(cls, data_dir: str | Path, options_per_product: int = 2, seed: int = 233) -> "Catalog":
        d = Path(data_dir)
        missing = [f for f in _FILES if not (d / f).is_file()]
        if missing:
            raise EnvError(f"WebShop data not found in {d}: missing {missing} (expected the 1k-product catalog "
                           f"resources_1k_documents.jsonl and items_ins_v2_1000.json; see data/README.md)")
        products = {}
        with (d / _FILES[0]).open() as f:
            for line in f:
                r = json.loads(line)
                products[r["id"]] = r["product"]
        ins = json.loads((d / _FILES[1]).read_text())
        goals = []
        for asin in sorted(ins):
            info, p = ins[asin], products.get(asin)
            if p is None or not info.get("instruction") or not info.get("instruction_attributes"):
                continue
            rng = random.Random(f"{seed}:{asin}")
            price = _price(p)
            ranges = [10.0 * i for i in range(1, 100) if 10.0 * i > price][:4]
            upper, price_text = 1e6, ""
            if len(ranges) >= 2:
                upper = sorted(rng.sample(ranges, 2))[1]
                price_text = f", and price lower than {upper:.2f} dollars"
            names = sorted(p.get("options") or {})
            combos = list(itertools.product(*(p["options"][n] for n in names))) or [()]
            if len(combos) > options_per_product:
                combos = rng.sample(combos, options_per_product)
            for combo in combos:
                opts = dict(zip(names, combo))
                opt_text = (" with " + ", and ".join(f"{k}: {v}" for k, v in opts.items())) if opts else ""
                goals.append(_goal(p, asin, info["instruction"] + opt_text + price_text, info["instruction_attributes"],
                                   opts, upper, "webshop", _split_of(asin)))
        for asin in sorted(products):
            for h in products[asin].get("instructions") or []:
                opts = {f"option{i}": v for i, v in enumerate(h.get("instruction_options") or [])}
                m = re.search(r"price lower than ([\d.]+) dollars", h["instruction"])
                goals.append(_goal(products[asin], asin, h["instruction"], h.get("instruction_attributes") or [],
                                   opts, float(m.group(1)) if m else 1e6, "webshop-human", "test"))
        import bm25s
        asins = sorted(products)
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize([products[a].get("query", "") + " " + _search_text(products[a]) for a in asins],
                                       stopwords="en", show_progress=False), show_progress=False)
        return cls(products, goals, retriever, asins)

    def search(self, query: str) -> list[str]:
        import bm25s
        toks = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not toks.vocab:
            return []
        docs, scores = self.retriever.retrieve(toks, k=min(TOP_K, len(self.asins)), show_progress=False)
        return [self.asins[int(i)] for i, s in zip(docs[0], scores[0]) if s > 0]


def _search_text(p: dict) -> str:
    return " ".join([p.get("Title", ""), " ".join(p.get("BulletPoints") or []), p.get("Description", "")])


def _goal(p, asin, text, attrs, opts, upper, kind, split) -> dict:
    return {"asin": asin, "instruction_text": text, "attributes": list(attrs), "goal_options": opts,
            "price_upper": upper, "query": p.get("query", ""), "name": p.get("name", p.get("Title", "")),
            "product_category": p.get("product_category", ""), "kind": kind, "split": split}


class WebShopEnv(TextEnv):
    name = "webshop"

    def __init__(self, data_dir: str | None, max_turns: int = 10, options_per_product: int = 2,
                 catalog: Catalog | None = None, task_types: list[str] | None = None):
        super().__init__(max_turns)
        self.kinds = set(task_types or ["webshop", "webshop-human"])
        if catalog is None:
            if not data_dir or not Path(data_dir).is_dir():
                raise EnvError(f"WebShop data directory not found: {data_dir} (set env.data_dir to the folder "
                               f"holding resources_1k_documents.jsonl and items_ins_v2_1000.json)")
            catalog = Catalog.load(data_dir, options_per_product)
        self.cat = catalog
        self.goal: dict = {}
        self.page: dict = {}

    def tasks(self, split: str) -> list[TaskRef]:
        if split not in ("train", "dev", "test"):
            raise ValueError(f"unknown split {split!r}")
        return [TaskRef(g["kind"], i) for i, g in enumerate(self.cat.goals) if g["split"] == split and g["kind"] in self.kinds]

    def _reset(self, task: TaskRef) -> Reset:
        if not 0 <= task.variation < len(self.cat.goals):
            raise EnvError(f"no WebShop goal {task.variation}")
        self.goal = self.cat.goals[task.variation]
        self.page = {"kind": "search"}
        return Reset(self.goal["instruction_text"], self._render())

    # -- pages -------------------------------------------------------------------------------------------
    def _render(self) -> str:
        pg, cat = self.page, self.cat
        head = ["Instruction:", self.goal["instruction_text"]]
        if pg["kind"] == "search":
            return SEP.join(["WebShop"] + head + ["Search"])
        if pg["kind"] == "results":
            res = pg["results"]
            start = (pg["p"] - 1) * PAGE
            parts = head + ["Back to Search", f"Page {pg['p']} (Total results: {len(res)})"]
            if pg["p"] > 1:
                parts.append("< Prev")
            if start + PAGE < len(res):
                parts.append("Next >")
            for a in res[start:start + PAGE]:
                parts += [a, cat.products[a].get("Title", ""), cat.products[a].get("Price", "")]
            return SEP.join(parts)
        p = cat.products[pg["asin"]]
        parts = head + ["Back to Search", "< Prev"]
        if pg["kind"] == "item":
            for name in sorted(p.get("options") or {}):
                parts += [name] + [str(v) for v in p["options"][name]]
            chosen = pg["options"]
            if chosen:
                parts.append("Selected: " + ", ".join(f"{k}: {v}" for k, v in chosen.items()))
            parts += [p.get("Title", ""), f"Price: {p.get('Price', '')}", f"Rating: {p.get('Rating', 'N.A.')}",
                      "Description", "Features", "Reviews", "Buy Now"]
            return SEP.join(parts)
        if pg["kind"] == "Description":
            return SEP.join(parts + [p.get("Description", "") or "N.A."])
        if pg["kind"] == "Features":
            return SEP.join(parts + (p.get("BulletPoints") or ["N.A."]))
        reviews = [f"{r.get('title', '')}: {r.get('body', '')}" if isinstance(r, dict) else str(r)
                   for r in p.get("Reviews") or []]
        return SEP.join(parts + (reviews or ["N.A."]))

    def valid_actions(self) -> list[str]:
        pg = self.page
        if pg["kind"] == "search":
            return ["search[<query>]"]
        if pg["kind"] == "results":
            start = (pg["p"] - 1) * PAGE
            acts = ["click[Back to Search]"] + (["click[< Prev]"] if pg["p"] > 1 else [])
            acts += ["click[Next >]"] if start + PAGE < len(pg["results"]) else []
            return acts + [f"click[{a}]" for a in pg["results"][start:start + PAGE]]
        acts = ["click[Back to Search]", "click[< Prev]"]
        if pg["kind"] == "item":
            p = self.cat.products[pg["asin"]]
            acts += [f"click[{v}]" for n in sorted(p.get("options") or {}) for v in p["options"][n]]
            acts += ["click[Description]", "click[Features]", "click[Reviews]", "click[Buy Now]"]
        return acts

    def _step(self, action: str):
        m = re.fullmatch(r"\s*(search|click)\s*\[(.*)\]\s*", action, flags=re.IGNORECASE | re.DOTALL)
        if not m:
            return "Invalid action. Use search[query] or click[button]." + SEP + self._render(), 0.0, False, {}
        verb, arg = m.group(1).lower(), m.group(2).strip()
        pg = self.page
        if verb == "search":
            if pg["kind"] != "search" or not arg:
                return "Invalid action: search only works on the search page." + SEP + self._render(), 0.0, False, {}
            self.page = {"kind": "results", "query": arg, "results": self.cat.search(arg), "p": 1}
            return self._render(), 0.0, False, {}
        low = arg.lower()
        if low == "back to search" and pg["kind"] != "search":
            self.page = {"kind": "search"}
        elif pg["kind"] == "results":
            start = (pg["p"] - 1) * PAGE
            shown = {a.lower(): a for a in pg["results"][start:start + PAGE]}
            if low == "next >" and start + PAGE < len(pg["results"]):
                pg["p"] += 1
            elif low == "< prev" and pg["p"] > 1:
                pg["p"] -= 1
            elif low in shown:
                self.page = {"kind": "item", "asin": shown[low], "options": {}, "back": pg}
            else:
                return self._invalid(arg)
        elif pg["kind"] == "item":
            p = self.cat.products[pg["asin"]]
            values = {str(v).lower(): (n, v) for n in sorted(p.get("options") or {}) for v in p["options"][n]}
            if low == "< prev":
                self.page = pg["back"]
            elif low in ("description", "features", "reviews"):
                self.page = {"kind": arg.capitalize(), "asin": pg["asin"], "back": pg}
            elif low in values:
                n, v = values[low]
                pg["options"] = {**pg["options"], n: v}
            elif low == "buy now":
                r = purchase_reward(p, _price(p), pg["options"], self.goal)
                return ("Thank you for shopping with us!" + SEP + f"Your score (min 0.0, max 1.0): {r['reward']:.2f}",
                        r["reward"], True, {"purchase": {"asin": pg["asin"], "options": pg["options"], **r}})
            else:
                return self._invalid(arg)
        elif pg["kind"] in ("Description", "Features", "Reviews") and low == "< prev":
            self.page = pg["back"]
        else:
            return self._invalid(arg)
        return self._render(), 0.0, False, {}

    def _invalid(self, arg: str):
        return f"Invalid action: there is no button '{arg}' here." + SEP + self._render(), 0.0, False, {}

    # -- expert ------------------------------------------------------------------------------------------
    def gold_actions(self, task: TaskRef) -> list[str]:
        """A scripted expert: search, page to the goal product, click it, choose the goal options, buy.

        Queries and buttons are written as the page shows them (the env matches case-insensitively, as
        WebShop does), so a cloned policy learns to copy text rather than to copy and lower-case it."""
        goal = self.cat.goals[task.variation]
        asin = goal["asin"]
        base = re.split(r", and price lower than", goal["instruction_text"])[0]  # goal product first for 75%
        for query in (base, self.cat.products[asin].get("Title", "")):
            res = self.cat.search(query)
            if asin in res:
                page = res.index(asin) // PAGE
                acts = [f"search[{query}]"] + ["click[Next >]"] * page + [f"click[{asin}]"]
                acts += [f"click[{v}]" for v in goal["goal_options"].values()]
                return acts + ["click[Buy Now]"]
        return [f"search[{base}]"]  # the product cannot be found: the replay check will reject it
