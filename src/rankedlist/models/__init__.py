"""Embedding models: BN-Inception (the paper), GlyphNet (the CPU demo) and any timm backbone.

``create_model(name, embedding_dim=512, pretrained=False, pretrained_path=None, pooling="avg",
freeze_bn=False, multi_level=False, **kwargs)`` returns an :class:`EmbeddingModel` whose
``forward`` gives the raw head outputs (``{"high": ...}`` or ``{"low", "mid", "high"}``) and
whose ``embed`` gives the fused, L2-normalised test-time embedding.
"""

from rankedlist.models.bn_inception import BNINCEPTION_URL, BNInception
from rankedlist.models.embedding_head import POOLINGS, EmbeddingHead, global_pool
from rankedlist.models.embedding_model import EmbeddingModel
from rankedlist.models.fingerprint import file_fingerprint, model_fingerprint
from rankedlist.models.glyph_net import GlyphNet
from rankedlist.models.multi_level_head import MultiLevelHead
from rankedlist.models.pretrained import LoadReport, PretrainedWeightsError
from rankedlist.models.registry import create_model, list_models, register_model

__all__ = [
    "BNINCEPTION_URL",
    "BNInception",
    "EmbeddingHead",
    "EmbeddingModel",
    "GlyphNet",
    "LoadReport",
    "MultiLevelHead",
    "POOLINGS",
    "PretrainedWeightsError",
    "create_model",
    "file_fingerprint",
    "global_pool",
    "list_models",
    "model_fingerprint",
    "register_model",
]
