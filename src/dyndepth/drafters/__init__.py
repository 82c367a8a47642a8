"""Drafters: where a step's candidate nodes come from.

    eagle.py    the EAGLE draft head grows a pool per row, one head forward per depth for all rows at once
    suffix.py   SuffixDrafter: continuations of the current context found in the prompt, the tokens generated so
                far and (optionally) a FIFO cache of earlier outputs, with frequency-based probabilities.
                Model-free: needs no head and no torch.
"""

from dyndepth.drafters.suffix import SuffixCache, SuffixDrafter, SuffixOptions, SuffixProposal

__all__ = ["SuffixCache", "SuffixDrafter", "SuffixOptions", "SuffixProposal"]
