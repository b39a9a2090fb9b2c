"""Methods: one file per method, each a Learner registered by name."""

from kshot.methods.base import METHODS, Learner, build_learner, get_method
from kshot.methods.knn import KNN, KNNConfig
from kshot.methods.matching import MatchingConfig, MatchingNetwork
from kshot.methods.protonet import ProtoNet, ProtoNetConfig
from kshot.methods.siamese import Siamese, SiameseConfig

__all__ = [
           "KNN",
           "METHODS",
           "KNNConfig",
           "Learner",
           "MatchingConfig",
           "MatchingNetwork",
           "ProtoNet",
           "ProtoNetConfig",
           "Siamese",
           "SiameseConfig",
           "build_learner",
           "get_method",
]
