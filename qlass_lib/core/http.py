"""The one HTTP client for OpenAI-compatible servers (the generation backend and the paraphraser).

An API key travels only over https, or over plain http to this machine.  Redirects are refused, not followed:
a redirect could carry the request (and its ``Authorization`` header) to another host or down to plain http.
"""
from __future__ import annotations

from urllib.parse import urlparse

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def safe_for_key(url: str) -> bool:
    """An API key may travel over https, or over plain http to this machine only."""
    u = urlparse(url)
    return u.scheme == "https" or (u.scheme == "http" and (u.hostname or "") in LOCAL_HOSTS)


def check_key_url(url: str, key: str | None, key_name: str) -> None:
    """A ``ValueError`` when ``key`` would travel over plain http to another machine."""
    if key and not safe_for_key(url):
        raise ValueError(f"refusing to send {key_name} over plain HTTP to {url}: use https:// (plain http is "
                         f"allowed only for localhost, or without a key)")


def openai_client(base_url: str, key: str | None, key_name: str, timeout: float, max_retries: int = 2):
    """An ``openai.OpenAI`` client whose HTTP layer does not follow redirects (a 3xx is an error)."""
    import httpx
    import openai
    check_key_url(base_url, key, key_name)
    return openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout, max_retries=max_retries,
                         http_client=httpx.Client(follow_redirects=False, timeout=timeout))
