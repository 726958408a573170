"""Benchmarks, run as modules from the repository root: ``.venv/bin/python -m bench.NAME [--help]``.

They import the project and the test helpers (``tests.tiny_models``, ``tests.tiny_vlms``, ...) as packages,
so nothing edits ``sys.path``. Every model they use is built on the spot: the Hugging Face Hub stays offline.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
