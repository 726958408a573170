"""Starting an episode from text: SAM 3 (``Sam3Model``) finds the instances of the expression's noun
phrase; the best one becomes the mask the policy's clicks refine, or, without a policy, the prediction."""
from .phrases import noun_phrase
from .sam3_text import Instance, TextGrounder
from .start import MAX_CANDIDATES, TextStart, Ungroundable, choose_instance, text_start

__all__ = ["Instance", "TextGrounder", "TextStart", "Ungroundable", "choose_instance", "noun_phrase", "text_start",
           "MAX_CANDIDATES"]
