"""What to share: plans, layouts, matching, merging, recovery, budgets, the layer loop (numpy/scipy)."""
