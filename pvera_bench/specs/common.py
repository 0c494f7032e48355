"""Choices several adapters share (declares no adapter)."""

# How a grid candidate's random draws are made: ``run`` (the run's RNG, every candidate alike) or
# ``pvera_code`` (the PVeRA code's per-candidate draws; pvera_bench.adapters.base.GridDraw).
DRAWS = ("run", "pvera_code")
DRAWS_HELP = "run: draws from the run's RNG; pvera_code: each grid candidate gets the PVeRA code's own draws"
