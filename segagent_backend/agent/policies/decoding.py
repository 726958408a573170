"""How an MLLM policy writes its answers: the one table of decoding modes by name (``SEGAGENT_DECODING``)."""
from __future__ import annotations

from ..choices import Choice

DECODINGS: dict[str, Choice] = {
    "free": Choice("the release's decoding: greedy with the checkpoint's generation config and stop words, nothing "
                   "forced or masked; an answer without a readable click ends the episode"),
    "grammar": Choice("the echo `<ref>..</ref> Current IOU: ` forced and the rest constrained to the answer "
                      "grammar, in the tokens the tokenizer itself produces"),
}
