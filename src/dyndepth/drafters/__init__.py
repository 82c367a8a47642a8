"""Drafters: where a step's candidate nodes come from.

    stage.py               the draft stage of a step: the decoder's drafter ("head", "suffix", "hybrid", "switch"),
                           each row's suffix state, the shared cache of earlier outputs, the calibrations
    eagle.py               the EAGLE draft head grows a pool per row, one head forward per depth for all rows at once
    suffix.py              suffix matches over the prompt, the output so far and earlier outputs (model-free)
    suffix_calibration.py  P(suffix node accepted | parent accepted) by match length and frequency estimate
    hybrid.py              one row's pool from the head's levels and a suffix proposal, on one scale
"""

from dyndepth.drafters.suffix import SuffixCache, SuffixDrafter, SuffixOptions, SuffixProposal

__all__ = ["SuffixCache", "SuffixDrafter", "SuffixOptions", "SuffixProposal"]
