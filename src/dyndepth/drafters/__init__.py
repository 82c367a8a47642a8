"""Drafters: where a step's candidate nodes come from.

    eagle.py    the EAGLE draft head grows a pool per row, one head forward per depth for all rows at once
    suffix.py   suffix matches over the prompt, the output so far and earlier outputs (model-free)
"""
