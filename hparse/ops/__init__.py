"""Differentiable and combinatorial operators shared by the methods (Instance CRF, bipartite matching)."""
