"""The embedding cache: LRU, bounded in bytes, keyed by image content."""
from __future__ import annotations

import numpy as np

from segagent_backend.agent.segmenters.cache import EmbeddingCache, image_digest


def test_lru_eviction_by_bytes():
    cache = EmbeddingCache(max_bytes=100)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("c", "C", 40)  # evicts b, the least recent
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert cache.nbytes == 80 and len(cache) == 2


def test_too_large_values_are_not_stored():
    cache = EmbeddingCache(max_bytes=10)
    cache.put("x", "X", 11)
    assert cache.get("x") is None and cache.nbytes == 0


def test_replacing_a_key_keeps_the_byte_count_right():
    cache = EmbeddingCache(max_bytes=100)
    cache.put("a", 1, 30)
    cache.put("a", 2, 50)
    assert cache.get("a") == 2 and cache.nbytes == 50


def test_digest_is_content_not_identity():
    a = np.zeros((4, 5, 3), np.uint8)
    b = a.copy()
    assert image_digest(a) == image_digest(b)
    b[3, 4, 2] = 1
    assert image_digest(a) != image_digest(b)
    assert image_digest(a) != image_digest(a.reshape(5, 4, 3))  # same bytes, other shape
