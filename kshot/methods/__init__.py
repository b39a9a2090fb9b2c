"""Methods: one file per method, each a Learner registered by name."""

from kshot.methods.base import METHODS, Learner, build_learner, get_method
from kshot.methods.knn import KNN, KNNConfig
from kshot.methods.protonet import ProtoNet, ProtoNetConfig

__all__ = [
           "KNN",
           "METHODS",
           "KNNConfig",
           "Learner",
           "ProtoNet",
           "ProtoNetConfig",
           "build_learner",
           "get_method",
]
