"""How runs are compared: sweeps, studies, pruning, paired comparisons, tables, the demo."""
