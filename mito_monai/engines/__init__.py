"""Ignite/MONAI training engines: one trainer per family of methods, methods as sets of loss terms."""

from mito_monai.engines.domain_adaptation import DomainAdaptationTrainer
from mito_monai.engines.two_loader import TwoLoaderTrainer, cycle
from mito_monai.engines.loss_term import DOMAIN_ADAPTATION_INPUTS, SEMI_SUPERVISED_INPUTS, TERM_INPUTS, LossTerm
from mito_monai.engines.methods import (
    CAFA_CODE_TERMS,
    METHODS,
    SSL_METHODS,
    SSL_TERMS,
    UNSUPERVISED_TERMS,
    method_terms,
    supervised_domain,
)
from mito_monai.engines.semi_supervised import SemiSupervisedTrainer
from mito_monai.engines.schedules import num_epochs, sigmoid_rampup
from mito_monai.engines.two_stage import format_comparison, recommended_adaptation, run_two_stage

__all__ = [
    "CAFA_CODE_TERMS",
    "DOMAIN_ADAPTATION_INPUTS",
    "DomainAdaptationTrainer",
    "SEMI_SUPERVISED_INPUTS",
    "SSL_METHODS",
    "SSL_TERMS",
    "SemiSupervisedTrainer",
    "TwoLoaderTrainer",
    "LossTerm",
    "METHODS",
    "recommended_adaptation",
    "TERM_INPUTS",
    "UNSUPERVISED_TERMS",
    "cycle",
    "format_comparison",
    "method_terms",
    "num_epochs",
    "run_two_stage",
    "sigmoid_rampup",
    "supervised_domain",
]
