"""Start and stop a local vLLM OpenAI-compatible server on a saved policy (CPU here; the GPU recipe is in the
README).  vLLM lives in its own virtualenv (``make vllm-venv`` builds ``.venv-vllm``): its CPU package pins
versions of transformers that the project's environment does not use.

``vllm serve`` fails on this machine on a package-metadata lookup, so the server is started as
``python -m vllm.entrypoints.openai.api_server``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from qlass_lib.core.paths import project_root


def vllm_python() -> Path:
    """The interpreter of the vLLM virtualenv (``QLASS_VLLM_PYTHON`` or ``<project>/.venv-vllm/bin/python``)."""
    return Path(os.environ.get("QLASS_VLLM_PYTHON", project_root() / ".venv-vllm" / "bin" / "python"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str      # http://127.0.0.1:<port>/v1
    model: str         # the served model name
    log_path: Path

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.is_file() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def servable(policy_dir: str | Path) -> Path:
    """A folder vLLM can serve for the policy saved at ``policy_dir``: the folder itself when it holds a full model,
    or, for a LoRA adapter (the pretrained default), the adapter merged into its base, written once beside it as
    ``<policy_dir>_merged`` (fp32 safetensors + tokenizer)."""
    from qlass_lib.models.loading import is_adapter_dir
    policy_dir = Path(policy_dir)
    if not is_adapter_dir(policy_dir):
        return policy_dir
    out = policy_dir.with_name(policy_dir.name + "_merged")
    mark = out / "qlass_merged.json"
    if mark.is_file() and json.loads(mark.read_text()).get("adapter_mtime_ns") == \
            (policy_dir / "adapter_model.safetensors").stat().st_mtime_ns:
        return out
    from qlass_lib.core.config import ModelConfig
    from qlass_lib.models.loading import load_policy
    model, tok = load_policy(policy_dir, ModelConfig(device="cpu", bf16=False))
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    mark.write_text(json.dumps({"adapter": str(policy_dir),
                                "adapter_mtime_ns": (policy_dir / "adapter_model.safetensors").stat().st_mtime_ns}))
    return out


def start_vllm(model_dir: str | Path, log_path: str | Path, max_model_len: int = 1024, port: int | None = None,
               name: str = "policy", kv_cache_gb: int = 1, seed: int = 0, startup_timeout: float = 600,
               python: str | Path | None = None, extra_args: list[str] | None = None,
               enforce_eager: bool = True) -> Server:
    """Start vLLM's OpenAI server on ``model_dir`` (float32 on CPU) and wait until it lists its model.

    ``enforce_eager`` skips vLLM's torch.compile warm-up: measured here on the smoke policy, start-up 40 s with
    it and 74 s without, on 2 CPU cores (a tiny model never pays the compile back)."""
    py = Path(python) if python else vllm_python()
    if not py.is_file():
        raise FileNotFoundError(f"no vLLM interpreter at {py}: build it with `make vllm-venv` (or set QLASS_VLLM_PYTHON)")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"no model at {model_dir} (config.json missing): vLLM serves full models; a LoRA "
                                f"adapter is served with --enable-lora on its base (README)")
    port = port or free_port()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb), "VLLM_LOGGING_LEVEL": "WARNING",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the server's packages come from its own venv only
    cmd = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name",
           name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len",
           str(max_model_len), "--seed", str(seed), *(["--enforce-eager"] if enforce_eager else []),
           *(extra_args or [])]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}/v1", name, log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"vLLM server exited with code {proc.returncode} while starting:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.base_url + "/models", timeout=5) as r:
                if name in [m["id"] for m in json.load(r)["data"]]:
                    return server
        except OSError:
            pass
        time.sleep(2)
    server.stop()
    raise TimeoutError(f"vLLM server not ready after {startup_timeout:.0f} s:\n{server.log_tail()}")
