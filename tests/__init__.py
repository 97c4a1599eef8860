"""The tests, in tiers: unit/ (nothing started), integration/ (real servers), e2e/ (the real commands), faults/."""
