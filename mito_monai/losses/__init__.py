"""Loss terms of the mitochondria adaptation methods, one MONAI-style loss per concept.

R4MITO (docs/design.md section 3): ``FeatureConsistencyLoss`` (L_cf), ``PseudoLabelConsistencyLoss`` (L_reg),
``PrototypePseudoLabelLoss`` (L_pro) and ``AgentRelationLoss`` (L_corr and L_rank, sharing one agent step).
From the public CAFA code (not in R4MITO's text): ``PrototypeAlignmentLoss`` (source compactness, prototype
separation, target alignment).

DualRel (docs/design.md section 4): ``ReliablePrototypeConsistencyLoss`` (L_rpc), ``PrototypeDiversityLoss`` (L_div).
Its semi-supervised baselines: ``SoftmaxConsistencyLoss`` (Mean Teacher), ``CrossPseudoSupervisionLoss`` (CPS).
"""

from .agents import (
    AGENT_STRATEGIES,
    AgentRelationLoss,
    AgentRelations,
    agent_correlation,
    agent_relations,
    correlation_consistency,
    gather_agents,
    log_plackett_luce,
    plackett_luce,
    rank_consistency,
    select_agents,
)
from .consistency import FeatureConsistencyLoss, PseudoLabelConsistencyLoss
from .dualrel import PrototypeDiversityLoss, ReliablePrototypeConsistencyLoss
from .prototype_alignment import PrototypeAlignmentLoss
from .prototype import PrototypePseudoLabelLoss, class_prototypes, cosine_similarity_map
from .semi_supervised import CrossPseudoSupervisionLoss, SoftmaxConsistencyLoss

__all__ = [
    "AGENT_STRATEGIES",
    "AgentRelationLoss",
    "AgentRelations",
    "CrossPseudoSupervisionLoss",
    "FeatureConsistencyLoss",
    "PrototypeAlignmentLoss",
    "PrototypeDiversityLoss",
    "PrototypePseudoLabelLoss",
    "PseudoLabelConsistencyLoss",
    "ReliablePrototypeConsistencyLoss",
    "SoftmaxConsistencyLoss",
    "agent_correlation",
    "agent_relations",
    "class_prototypes",
    "correlation_consistency",
    "cosine_similarity_map",
    "gather_agents",
    "log_plackett_luce",
    "plackett_luce",
    "rank_consistency",
    "select_agents",
]
