"""Building blocks shared by the networks and the losses (depend on torch only)."""

from mito_monai.ops.agent_selection import AGENT_STRATEGIES, gather_agents, orthogonal_indices, select_agents

__all__ = ["AGENT_STRATEGIES", "gather_agents", "orthogonal_indices", "select_agents"]
