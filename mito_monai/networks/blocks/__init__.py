"""Building blocks of the mito_monai networks."""

from .referential_attention import ReferentialAttentionMaps, ReferentialCrossAttention

__all__ = ["ReferentialAttentionMaps", "ReferentialCrossAttention"]
