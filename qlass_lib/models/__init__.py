"""Models: loading (tiny, packaged, Hugging Face, 4-bit + LoRA), the sampling policy, KV caching, generation
backends, the vLLM server and the one optimizer loop.
"""
