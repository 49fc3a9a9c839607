"""WebShop's purchase reward (Yao et al., 2022, §3.2), written from the paper's definition.

    reward = r_type * (|attribute matches| + |option matches| + 1[price <= price_upper])
                    / (|goal attributes| + |goal options| + 1)

- An attribute matches when a product attribute has a token-set similarity > 85 with it, or when it appears
  in the title, features or description; an option matches when a chosen option value has similarity > 85.
- r_type scores whether the right *kind* of product was bought: 1 when the search query or >= 2 category
  levels match or the title shares > 20% of the goal title's content words; 0.5 when none of those holds;
  0.1 when the title overlap is below 10%; 0 when it is zero.  The original uses spaCy noun tags for the
  title words; here content words are the lowercase alphabetic tokens outside a stop-word list (documented
  deviation, no model download needed).
"""
from __future__ import annotations

import re

from rapidfuzz import fuzz

_STOP = set("""a an the and or of for with in on to by from at as is are be this that these those it its
your you i me my we our new set pack count size color inch inches oz ounce ounces x""".split())


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", (text or "").lower()) if w not in _STOP and len(w) > 1}


def type_reward(product: dict, goal: dict) -> dict:
    query_match = product.get("query") == goal.get("query")
    pc = {x.strip() for x in (product.get("product_category") or "").split("›") if x.strip()}
    gc = {x.strip() for x in (goal.get("product_category") or "").split("›") if x.strip()}
    category_match = len(pc & gc) >= 2
    want = content_words(goal.get("name", ""))
    have = content_words(product.get("name", "") or product.get("Title", ""))
    title_score = 0.2 if not want else len(want & have) / len(want)
    r = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r = 0.5
    if title_score < 0.1:
        r = 0.1
    if title_score == 0.0:
        r = 0.0
    return {"r_type": r, "query_match": query_match, "category_match": category_match, "title_score": title_score}


def attribute_matches(product: dict, goal_attrs: list[str]) -> int:
    text = " ".join([product.get("Title", ""), " ".join(product.get("BulletPoints") or []),
                     product.get("Description", "")]).lower()
    n = 0
    for g in goal_attrs:
        if any(fuzz.token_set_ratio(p, g) > 85 for p in product.get("Attributes") or []) or g.lower() in text:
            n += 1
    return n


def option_matches(chosen: list[str], goal_options: list[str]) -> int:
    return sum(1 for g in goal_options if any(fuzz.token_set_ratio(p.lower(), g.lower()) > 85 for p in chosen))


def purchase_reward(product: dict, price: float, chosen_options: dict, goal: dict) -> dict:
    """The reward in [0, 1] and its parts."""
    t = type_reward(product, goal)
    attrs = list(goal.get("attributes") or [])
    opts = list((goal.get("goal_options") or {}).values())
    n_attr = attribute_matches(product, attrs)
    n_opt = option_matches(list(chosen_options.values()), opts)
    r_price = float(price <= goal.get("price_upper", float("inf")))
    total = (n_attr + n_opt + r_price) / (len(attrs) + len(opts) + 1) * t["r_type"]
    return {"reward": total, **t, "attribute_matches": n_attr, "n_goal_attributes": len(attrs),
            "option_matches": n_opt, "n_goal_options": len(opts), "r_price": r_price}
