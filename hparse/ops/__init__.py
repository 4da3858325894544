"""Differentiable and combinatorial operators shared by the methods (Instance CRF, bipartite matching)."""
from .matching import assignment_loss, dykstra_matching, greedy_matching, hungarian_matching, round_assignment
