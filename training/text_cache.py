"""Train the last N layers of pcclip-mini's MiniLM text tower on cached inputs.

The first `6 - N` transformer layers are frozen, so their output (the hidden states that enter
the trainable layers) is computed once per text and kept in memory (fp16); a training step runs
only the last N layers, mean pooling and the head. `LastLayersText(model, n)(states, mask)` gives
exactly what `model.encode_text(ids)` gives (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm


class LastLayersText(nn.Module):
    """The trainable tail of a pcclip-mini text tower: its last `n_layers` layers, pooling, head."""

    def __init__(self, model, n_layers: int):
        super().__init__()
        self.tower = model.text
        self.n_layers = n_layers
        blocks = list(self.tower.blocks)
        if not 0 <= n_layers <= len(blocks):
            raise ValueError(f"the text tower has {len(blocks)} layers, not {n_layers}")
        self.first_trainable = len(blocks) - n_layers

    def trainable_parameters(self) -> list[nn.Parameter]:
        blocks = list(self.tower.blocks)[self.first_trainable:]
        return [p for b in blocks for p in b.parameters()] + list(self.tower.head.parameters())

    def trainable_names(self, model) -> list[str]:
        ids = {id(p) for p in self.trainable_parameters()}
        return sorted(n for n, p in model.named_parameters() if id(p) in ids)

    @torch.no_grad()
    def cache_inputs(self, ids: torch.Tensor, batch_size: int = 128,
                     desc: str = "text states") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden states entering the first trainable layer [N, L, W] (fp16), the masks [N, L] (bool)
        and the frozen tower's pooled features [N, W] (float32); L = the longest text. Texts are
        batched by length, so short texts cost little."""
        mask = ids != self.tower.pad_id
        lengths = mask.sum(1)
        length = max(1, int(lengths.max())) if len(ids) else 1
        ids, mask = ids[:, :length], mask[:, :length]
        states = torch.zeros((len(ids), length, self.tower.width), dtype=torch.half)
        pooled = torch.zeros((len(ids), self.tower.width))
        order = torch.argsort(lengths)
        for i in tqdm(range(0, len(ids), batch_size), desc=desc, unit="batch", disable=None):
            idx = order[i:i + batch_size]
            n = max(1, int(lengths[idx].max()))
            m = mask[idx, :n]
            hs = self.tower.transformer(input_ids=ids[idx, :n], attention_mask=m.long(), output_hidden_states=True).hidden_states
            states[idx, :n] = hs[self.first_trainable].half()
            mf = m.unsqueeze(-1).float()
            pooled[idx] = (hs[-1] * mf).sum(1) / mf.sum(1).clamp(min=1.0)
        return states, mask, pooled

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = max(1, int(mask.sum(1).max()))
        hidden, mask = states[:, :length].float(), mask[:, :length]
        additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for block in list(self.tower.blocks)[self.first_trainable:]:
            out = block(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        return self.tower.head(pooled)
