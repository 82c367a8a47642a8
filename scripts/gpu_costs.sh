#!/usr/bin/env bash
# GPU cost curves for a lent H100 (python3 there holds PyTorch); writes gpu_costs.json/.md to $OUT when set.
exec python3 "$(dirname "$0")/gpu_costs.py" "$@"
