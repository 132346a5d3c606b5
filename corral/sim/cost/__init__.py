"""Cost models, registered by name. Importing this package registers the built-in ones."""

from corral.sim.cost import profiled, roofline  # noqa: F401
from corral.sim.cost.base import COST_MODELS, CostModel, CostModelOptions, make_cost_model

__all__ = ["COST_MODELS", "CostModel", "CostModelOptions", "make_cost_model"]
