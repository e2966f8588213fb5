"""A pretrained sentence encoder inside a tower, its last layers trained with the towers.

`TextModelEncoder` reads a text as token ids (B, T), -1 past its end (features.fitting's "tokens"
encoding), runs the pretrained transformer, mean-pools the token states over the text and
normalises the result: the vector sentence-transformers computes for a model of a transformer then
mean pooling (tests/towers/test_text_model.py checks that they agree before training). A learned
linear map takes it to the tower's dimension. The embeddings and all but the last `tune_layers`
transformer layers are frozen: they get no gradient and stay in eval mode (no dropout). A row
without text (all -1) reads zeros, as the frozen path's vector of no text does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from towers.inputs import TowerInput


def load_backbone(model: str) -> nn.Module:
    """The transformer of `model` (a sentence-transformers model name or directory) with its
    pretrained weights, from local files only."""
    from features.text_encoder import TextModelError, backbone_directory, import_extra

    transformers = import_extra("transformers")
    directory = backbone_directory(model)
    try:
        return transformers.AutoModel.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise TextModelError(model, f"cannot be loaded from {directory}: {error}") from error


def transformer_layers(backbone: nn.Module, model: str) -> nn.ModuleList:
    """The backbone's stack of transformer layers, lowest first (BERT-like: `encoder.layer`)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        from features.text_encoder import TextModelError

        raise TextModelError(
            model, "fine-tuning needs a BERT-like transformer (layers at encoder.layer)"
        )
    return layers


class TextModelEncoder(nn.Module):
    """Token ids (B, T) → the transformer's normalised mean-pooled vector (B, d) → (B, D)."""

    def __init__(self, spec: TowerInput, dim: int):
        super().__init__()
        self.backbone = load_backbone(spec.model)
        layers = transformer_layers(self.backbone, spec.model)
        if not 1 <= spec.tune_layers <= len(layers):
            raise ValueError(
                f"input {spec.name!r}: fine_tune_layers={spec.tune_layers}, the text model "
                f"{spec.model!r} has {len(layers)} layers"
            )
        self.backbone.requires_grad_(False)
        self.tuned = layers[len(layers) - spec.tune_layers :]
        self.tuned.requires_grad_(True)
        self.linear = nn.Linear(spec.dim, dim, bias=False)

    def train(self, mode: bool = True) -> TextModelEncoder:
        super().train(mode)
        self.backbone.eval()  # the frozen layers never train
        self.tuned.train(mode)
        return self

    def sentence_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids, -1 past the end → (B, d) unit vectors (zeros for no text)."""
        present = tokens >= 0  # (B, T)
        texts = present.any(1)  # (B,)
        width = int(present.sum(1).max()) if texts.any() else 0  # longest text in the batch
        vectors = torch.zeros(
            len(tokens),
            self.linear.in_features,
            device=tokens.device,
            dtype=self.linear.weight.dtype,
        )
        if width:
            ids, mask = tokens[texts, :width].clamp(min=0), present[texts, :width]
            states = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            weights = mask[:, :, None].to(states.dtype)  # (b, T, 1)
            pooled = (states * weights).sum(1) / weights.sum(1)  # (b, d)
            vectors = vectors.index_put((texts.nonzero()[:, 0],), F.normalize(pooled, dim=-1))
        return vectors

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.sentence_vectors(tokens))  # (B, D)
