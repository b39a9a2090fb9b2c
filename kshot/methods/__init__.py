"""Methods: one file per method, each a Learner registered by name."""

from kshot.methods.base import METHODS, Learner, build_learner, get_method
from kshot.methods.daml import DAML, DAMLConfig
from kshot.methods.knn import KNN, KNNConfig
from kshot.methods.maml import MAML, MAMLConfig, Pretrained
from kshot.methods.mann import MANN, MANNConfig
from kshot.methods.matching import MatchingConfig, MatchingNetwork
from kshot.methods.meta_lstm import MetaLSTM, MetaLSTMConfig
from kshot.methods.metanet import MetaNet, MetaNetConfig
from kshot.methods.ntm import NTM, LSTMBaseline, LSTMBaselineConfig, NTMConfig
from kshot.methods.protonet import ProtoNet, ProtoNetConfig
from kshot.methods.siamese import Siamese, SiameseConfig

__all__ = [
           "DAML",
           "KNN",
           "MAML",
           "MANN",
           "METHODS",
           "NTM",
           "DAMLConfig",
           "KNNConfig",
           "LSTMBaseline",
           "LSTMBaselineConfig",
           "Learner",
           "MAMLConfig",
           "MANNConfig",
           "MatchingConfig",
           "MatchingNetwork",
           "MetaLSTM",
           "MetaLSTMConfig",
           "MetaNet",
           "MetaNetConfig",
           "NTMConfig",
           "Pretrained",
           "ProtoNet",
           "ProtoNetConfig",
           "Siamese",
           "SiameseConfig",
           "build_learner",
           "get_method",
]
