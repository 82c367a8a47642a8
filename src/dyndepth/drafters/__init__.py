"""drafters: where a step's candidate nodes come from: the EAGLE head, and suffix matches.

    suffix.py   SuffixDrafter: continuations of the current context found in the prompt, the tokens generated
                so far and (optionally) a FIFO cache of earlier outputs, with frequency-based probabilities.
                Model-free: needs no head and no torch.

The EAGLE head's growth lives in ``dyndepth.draft`` (``grow_pool``).
"""

from dyndepth.drafters.suffix import SuffixCache, SuffixDrafter, SuffixOptions, SuffixProposal

__all__ = ["SuffixCache", "SuffixDrafter", "SuffixOptions", "SuffixProposal"]
