"""Foundations every layer uses: typed configuration, artifacts (JSON/JSONL/safetensors I/O, manifests), paths,
statistics, the token budget counter, the stage list and the one HTTP client.
"""
