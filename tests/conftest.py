"""Suite-wide environment, set before anything imports torch, ray or vllm."""

import os

# torch's OpenMP threads spin-wait by default and stall for seconds when another process
# (a Ray actor, a vLLM engine) holds a core; passive waiting keeps the suite fast here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
