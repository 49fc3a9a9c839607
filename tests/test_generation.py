"""The ``openai`` backend's request, token accounting, retries and errors, against a scripted HTTP server
(the real vLLM server is exercised in tests/test_smoke_server.py)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from qlass_lib.core.budget import Budget
from qlass_lib.core.config import ConfigError, GenerationConfig, SamplingConfig, load_config
from qlass_lib.models.generation import GenerationServerError, ServerPolicy
from qlass_lib.text.prompts import fitted_prompt, initial_state


class Scripted(BaseHTTPRequestHandler):
    """Answers /v1/models, and /v1/completions after failing ``fail_first`` times with 503."""
    fail_first = 0
    requests: list = []
    text = "Thought: look first.\nAction: look around"
    completion_tokens = None  # what usage reports (None: no usage in the answer)
    token_logprobs = None  # the sampled tokens' log-probabilities the answer carries (None: no logprobs)

    def log_message(self, *a):
        pass

    def _send(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model", "created": 0,
                                                     "owned_by": "test"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.requests.append(body)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            return self._send(503, {"error": {"message": "busy"}}, [("retry-after-ms", "10")])
        n = body.get("n", 1)
        lp = None if cls.token_logprobs is None else {"tokens": [], "token_logprobs": cls.token_logprobs,
                                                      "top_logprobs": None, "text_offset": []}
        choices = [{"index": i, "text": cls.text, "finish_reason": "stop", "logprobs": lp} for i in range(n)]
        usage = None if cls.completion_tokens is None else {"prompt_tokens": 1, "total_tokens": 1,
                                                             "completion_tokens": cls.completion_tokens}
        self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                         "choices": choices, "usage": usage})


@pytest.fixture
def scripted():
    Scripted.fail_first, Scripted.requests, Scripted.completion_tokens, Scripted.token_logprobs = 0, [], None, None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


STATE = initial_state("scienceworld", "Your task is to find a(n) animal.", "This room is called the hallway.")


def _policy(tok, url, **kw):
    return ServerPolicy(tok, GenerationConfig(backend="openai", base_url=url, vllm_extensions=False, **kw), 256)


def test_greedy_request_and_local_token_count(tiny_tok, scripted):
    tok, _ = tiny_tok
    local_count = len(tok(Scripted.text, add_special_tokens=False)["input_ids"]) + 1  # + the end-of-sequence token
    Scripted.completion_tokens = local_count
    pol, b = _policy(tok, scripted, max_retries=0), Budget()
    (c,) = pol.propose(STATE, 1, None, b)
    assert c.action == "look around" and c.tokens == local_count and b.gen_tokens == local_count
    (req,) = Scripted.requests
    assert req["prompt"] == fitted_prompt(tok, STATE, 256, 48)[0]  # the project's one formatter, as text
    assert req["temperature"] == 0 and req["n"] == 1 and req["max_tokens"] == 48 and req["model"] == "scripted"
    assert "seed" not in req and pol.stats["token_mismatches"] == 0
    assert req["logprobs"] == 0 and c.logprob is None  # asked for; this server sends none


def test_candidate_logprob_sums_the_charged_tokens(tiny_tok, scripted):
    """The server's per-token log-probabilities are summed over the tokens the candidate is charged for."""
    tok, _ = tiny_tok
    n_tok = len(tok(Scripted.text, add_special_tokens=False)["input_ids"]) + 1
    Scripted.token_logprobs = [-0.5] * n_tok + [-9.0, None]  # tokens past the charged ones do not count
    (c,) = _policy(tok, scripted).propose(STATE, 1, None)
    assert c.tokens == n_tok and c.logprob == pytest.approx(-0.5 * n_tok)


def test_sampling_sends_n_and_a_seed_from_torch(tiny_tok, scripted):
    tok, _ = tiny_tok
    pol = _policy(tok, scripted)
    samp = SamplingConfig(temperature=0.7, top_k=5, max_new_tokens=20)
    seeds = []
    for _ in range(2):
        torch.manual_seed(3)
        assert len(pol.propose(STATE, 3, samp)) == 3
        seeds.append(Scripted.requests[-1]["seed"])
    req = Scripted.requests[-1]
    assert seeds[0] == seeds[1] and req["n"] == 3 and req["temperature"] == 0.7 and req["top_k"] == 5


def test_usage_wins_when_the_local_count_disagrees(tiny_tok, scripted):
    tok, _ = tiny_tok
    Scripted.completion_tokens = 100
    pol, b = _policy(tok, scripted), Budget()
    pol.propose(STATE, 2, SamplingConfig(), b)
    assert b.gen_tokens == 100 and pol.stats["token_mismatches"] == 1  # charged what the server generated


def test_transient_errors_are_retried(tiny_tok, scripted):
    tok, _ = tiny_tok
    Scripted.fail_first = 2
    (c,) = _policy(tok, scripted, max_retries=3).propose(STATE, 1, None)
    assert c.action == "look around" and len(Scripted.requests) == 3


def test_a_server_that_keeps_failing_stops_with_its_url(tiny_tok, scripted):
    tok, _ = tiny_tok
    Scripted.fail_first = 10
    with pytest.raises(GenerationServerError, match=scripted.replace("/v1", "")):
        _policy(tok, scripted, max_retries=1).propose(STATE, 1, None)
    assert len(Scripted.requests) == 2


def test_no_server_at_all_is_one_clear_error(tiny_tok):
    from qlass_lib.models.server import free_port
    tok, _ = tiny_tok
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GenerationServerError, match="start the server again"):
        _policy(tok, url, max_retries=1, timeout_s=5.0).propose(STATE, 1, None)


def test_a_generation_key_never_travels_over_plain_http(tiny_tok, monkeypatch):
    tok, _ = tiny_tok
    monkeypatch.setenv("QLASS_GENERATION_API_KEY", "sk-x")
    with pytest.raises(ValueError, match="plain HTTP"):
        _policy(tok, "http://gpu-box.example.com:8000/v1").client()
    _policy(tok, "http://127.0.0.1:8000/v1").client()
    _policy(tok, "https://gpu-box.example.com/v1").client()


def test_openai_backend_needs_a_url_and_execution_keys_are_typed():
    with pytest.raises(ConfigError, match="generation.base_url"):
        load_config(None, {"generation": {"backend": "openai"}})
    with pytest.raises(ConfigError, match="executor.kind"):
        load_config(None, {"executor": {"kind": "dask"}})
    with pytest.raises(ConfigError, match="generation.bse_url"):
        load_config(None, {"generation": {"bse_url": "x"}})
