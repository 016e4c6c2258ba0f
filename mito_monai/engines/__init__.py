"""Ignite/MONAI training engines: one trainer per family of methods, methods as sets of loss terms."""

from mito_monai.engines.domain_adaptation import DomainAdaptationTrainer, cycle
from mito_monai.engines.loss_term import TERM_INPUTS, LossTerm
from mito_monai.engines.methods import METHODS, UNSUPERVISED_TERMS, method_terms, supervised_domain
from mito_monai.engines.schedules import sigmoid_rampup

__all__ = [
    "DomainAdaptationTrainer",
    "LossTerm",
    "METHODS",
    "TERM_INPUTS",
    "UNSUPERVISED_TERMS",
    "cycle",
    "method_terms",
    "sigmoid_rampup",
    "supervised_domain",
]
