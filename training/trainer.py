"""The trainer behind `pcclip train`: PC-CLIP finetuning and standard CLIP (base) training, and the one
optimisation loop of pcclip (`OptimisationLoop`), which `pcclip reproduce`'s stages train through too.

- PC-CLIP (`--preset pc-clip`, the default): pair records (the shared JSONL contract) train the
  text transformer with the PC-CLIP loss; the image tower is frozen and its embeddings are cached
  on disk; optionally the CLIP loss on image-caption pairs is mixed in (`--clip-weight`).
- Base (`--preset base`): no pairs, only image-caption pairs and the CLIP loss; by default the
  heads and the logit scale train on cached trunk features (pcclip-mini's base model).

Runs on CPU or CUDA, single process or under `torchrun` (DistributedDataParallel; gloo on CPU,
nccl on GPU; each rank sees its shard of every epoch via DistributedSampler; the contrastive loss
is computed per rank over its local batch). A run directory holds `config.json`, `metrics.jsonl`,
and while the run is unfinished `last.pt` (the resume point: trainable weights, optimizer,
scheduler, RNG, epoch and step; `--resume` continues a killed run to the same final weights). A
finished run holds the final weights once, `final.safetensors` (every weight, the base spec and
what the run started from in its metadata; loadable by `models.loading.load_model`), plus
`weights.safetensors` for pcclip models (only the trained parameters), `summary.json`, and
`epoch-NNN.safetensors` after each complete epoch only with `save_epochs` (`--save-epochs`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from training import losses
from training.features import ImageFeatureCache, default_cache_dir, image_cache_key
from training.parts import (
    check_image_trunk_frozen,
    image_split,
    parse_parts,
    set_train_mode,
    set_trainable,
    text_split,
)
from training.records import read_captions, read_pairs

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)

PRESETS: dict[str, dict] = {
    # the official PC-CLIP code: only the text transformer's layers train, temperature fixed at 1
    # (its lr, 1e-8 with Adam at batch 512 for ViT-L/14, is far too small for a small text tower)
    "pc-clip": {"train": "text-transformer", "temperature": 1.0, "lr": 1e-5, "weight_decay": 0.1,
                "clip_weight": 0.0, "warmup_steps": 10},
    # standard contrastive image-caption training of the heads and the logit scale on cached trunk features
    "base": {"train": "text-head,image-head,logit-scale", "temperature": None, "lr": 1e-3, "weight_decay": 0.1,
             "clip_weight": 1.0, "warmup_steps": 10},
}


@dataclass
class TrainConfig:
    """Everything that defines a run (saved as `config.json` in the run directory)."""

    model: str
    out: str
    pairs: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    data: str = ""
    exclude_classes: str | None = None
    preset: str = "pc-clip"
    train: str = "text-transformer"
    temperature: float | None = 1.0  # None: the model's logit scale
    learn_temperature: bool = False
    clip_weight: float = 0.0
    wise_alpha: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 64
    caption_batch_size: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    cache_dir: str = ""
    save_every: int = 0
    save_epochs: bool = False  # also write epoch-NNN.safetensors after each complete epoch
    feature_batch_size: int = 32
    probe_weight: float = 0.0  # attribute-direction loss (training.attribute_probe; attribute-writer pairs, CUB)
    probe_ridge: float = 1.0

    def parts(self) -> list[str]:
        parts = parse_parts(self.train)
        if self.learn_temperature and "logit-scale" not in parts:
            parts.append("logit-scale")
        return parts


# -- distributed helpers ------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()


def resolve_device(device: str, dist_info: DistInfo) -> torch.device:
    """The device this process trains on; a bare `cuda` gets this process's index (0 when it runs alone)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{dist_info.local_rank}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return torch.device(device)


# -- schedule, RNG --------------------------------------------------------------------------------

def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_scaled_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier of `pcclip reproduce`'s stages: a linear warmup over `warmup` steps times a cosine
    decay over all `total` steps (the decay starts at step 0, not after the warmup)."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def caption_batch(step: int, n: int, batch: int, seed: int, dist_info: DistInfo) -> torch.Tensor:
    """Indices of the caption batch mixed into global step `step` (deterministic; sharded by rank)."""
    per_rank = n // dist_info.world_size
    batches = per_rank // batch
    if batches < 1:
        raise ValueError(f"{n} captions are fewer than one caption batch of {batch} per process")
    cycle, offset = divmod(step, batches)
    g = torch.Generator().manual_seed(seed + 1_000_003 + cycle)
    perm = torch.randperm(n, generator=g)[dist_info.rank :: dist_info.world_size][:per_rank]
    return perm[offset * batch : (offset + 1) * batch]


# -- the optimisation loop (`pcclip train` and `pcclip reproduce`) --------------------------------------

@dataclass
class StepResult:
    """What one optimisation step did: `step` steps are done; `details` is what `step_loss` returned beside the loss."""

    step: int
    loss: torch.Tensor
    details: object
    grad_norm: torch.Tensor | None
    lr: float


class OptimisationLoop:
    """The one optimisation loop of pcclip training: `Trainer.run` (`pcclip train`) and both stages of
    `pcclip reproduce` (`training.default_model`) train through it.

    AdamW over `params` (`decay_matrices_only`: weight decay on tensors of 2+ dimensions only, biases
    and norms in a group without it), a LambdaLR schedule (`schedule(step)` multiplies `lr`), and per
    step: `step_loss(step)` (a loss, or `(loss, details)`), zero_grad, backward, gradient-norm clipping
    at `grad_clip` (0: none), optimizer step, schedule step, `on_step(StepResult)`, the progress bar.
    With a `checkpoint` path it writes a resume point there every `save_every` steps (and on `save()`):
    the step, optimizer, scheduler, global RNG states and whatever `extra_state(step)` adds;
    `resume(state)` continues from one, to the same weights as an uninterrupted run.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, weight_decay: float, schedule, total_steps: int,
                 grad_clip: float = 0.0, decay_matrices_only: bool = False, checkpoint: Path | None = None,
                 save_every: int = 0, extra_state=None):
        self.params = list(params)
        if decay_matrices_only:
            groups = [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": weight_decay},
                      {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}]
            self.optimizer = torch.optim.AdamW(groups, lr=lr)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.total_steps = total_steps
        self.grad_clip = grad_clip
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.save_every = save_every
        self.extra_state = extra_state
        self.step = 0

    def take_step(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Backward `loss` and update the parameters; returns the gradient norm when clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip) if self.grad_clip > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return grad_norm

    def run(self, step_loss, on_step=None, **bar) -> int:
        """Train from the current step to `total_steps`; `bar`: tqdm options (desc, disable, mininterval)."""
        progress = tqdm(total=self.total_steps, initial=self.step, unit="step", **bar)
        try:
            while self.step < self.total_steps:
                out = step_loss(self.step)
                loss, details = out if isinstance(out, tuple) else (out, None)
                grad_norm = self.take_step(loss)
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                if on_step is not None:
                    on_step(StepResult(self.step, loss, details, grad_norm, self.scheduler.get_last_lr()[0]))
                if self.checkpoint is not None and self.save_every and self.step % self.save_every == 0 \
                        and self.step < self.total_steps:
                    self.save()
        finally:
            progress.close()
        return self.step

    def state_dict(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state()}

    def save(self) -> None:
        """Write the resume point (atomically) to the checkpoint path."""
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        torch.save({**(self.extra_state(self.step) if self.extra_state else {}), **self.state_dict()}, tmp)
        tmp.replace(self.checkpoint)

    def resume(self, state: dict) -> None:
        """Continue from a resume point (`save()`); the trained weights are the caller's to restore."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        set_rng_state(state["rng"])


# -- the objective as one module (what DDP wraps) ---------------------------------------------------

class Objective(nn.Module):
    """Loss of one batch: PC-CLIP on pairs and/or CLIP on captions, from cached image features."""

    def __init__(self, model, image_head, embed_texts, scale_fn, clip_weight: float, probe_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.image_head = image_head
        self.embed_texts = embed_texts
        self.scale_fn = scale_fn
        self.clip_weight = clip_weight
        self.probe_weight = probe_weight

    def forward(self, pair_batch=None, caption_batch=None, pair_directions=None):
        """(total, pc, clip, probe) losses; `pair_directions` [B, D]: the facts' directions of the pair texts."""
        scale = self.scale_fn()
        pc = clip = probe = None
        if pair_batch is not None:
            feats_a, feats_b, text_idx = pair_batch
            texts = self.embed_texts(text_idx)
            pc = losses.pc_clip_loss(texts, self.image_head(feats_a), self.image_head(feats_b), scale)
            if pair_directions is not None and self.probe_weight > 0:
                probe = losses.attribute_direction_loss(texts, pair_directions)
        if caption_batch is not None:
            feats, text_idx = caption_batch
            clip = losses.clip_loss(self.image_head(feats), self.embed_texts(text_idx), scale)
        total = losses.combined_loss(pc, clip, self.clip_weight)
        if probe is not None:
            total = total + self.probe_weight * probe
        return total, pc, clip, probe


# -- the trainer ------------------------------------------------------------------------------------

class Trainer:
    """Builds everything a run needs from a TrainConfig; `run()` trains and writes the run directory."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        from models.checkpoints import state_fingerprint
        from models.loading import load_model

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist = init_distributed("cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
        self.device = resolve_device(cfg.device, self.dist)
        self.resume_state = self._read_resume_state() if resume else None
        seed_everything(cfg.seed)
        self.loaded = load_model(cfg.model)
        self.model = self.loaded.model
        # what `pcclip eval` needs to rebuild this exact starting model (a random init included)
        self.start = {"start_model": cfg.model, "start_seed": cfg.seed, "start_fingerprint": state_fingerprint(self.model)}
        self.parts = cfg.parts()
        if cfg.temperature is not None:
            with torch.no_grad():
                self.model.logit_scale.fill_(math.log(1.0 / cfg.temperature))
        self.trainable_names = set_trainable(self.model, self.parts)
        check_image_trunk_frozen(self.model)
        state = self.model.state_dict()
        self.base_trainable = {n: state[n].detach().clone() for n in self.trainable_names}
        self.model.to(self.device)
        self._load_data()
        self._prepare_features()
        self.pair_directions = self._fit_attribute_probe() if cfg.probe_weight > 0 else None

    # data ----------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        from training.data import default_data_dir, load_class_split

        cfg = self.cfg
        self.root = Path(cfg.data) if cfg.data else default_data_dir()
        excluded = load_class_split(cfg.exclude_classes) if cfg.exclude_classes else []
        self.pairs = [r for p in cfg.pairs for r in read_pairs(p, excluded)]
        self.captions = [r for s in cfg.captions for r in read_captions(s, self.root, excluded)]
        if not self.pairs and not self.captions:
            raise ValueError("no training data: give --pairs and/or --captions")
        if self.pairs and self.captions and cfg.clip_weight <= 0:
            raise ValueError("captions were given but --clip-weight is 0: give a positive weight to mix them in")
        paths = {r.image_a for r in self.pairs} | {r.image_b for r in self.pairs} | {r.image for r in self.captions}
        self.image_paths = sorted(paths)
        missing = [p for p in self.image_paths if not (self.root / p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images not found under {self.root}, e.g. {missing[0]}")
        texts = sorted({r.text for r in self.pairs} | {r.caption for r in self.captions})
        self.texts = texts
        t_index = {t: i for i, t in enumerate(texts)}
        i_index = {p: i for i, p in enumerate(self.image_paths)}
        self.pair_index = torch.tensor([[i_index[r.image_a], i_index[r.image_b], t_index[r.text]] for r in self.pairs], dtype=torch.long).reshape(-1, 3)
        self.caption_index = torch.tensor([[i_index[r.image], t_index[r.caption]] for r in self.captions], dtype=torch.long).reshape(-1, 2)

    def _prepare_features(self) -> None:
        cfg = self.cfg
        split = image_split(self.model, "image-head" in self.parts)
        self.image_head = split.head
        key = image_cache_key(self.model, self.loaded.preprocess_cfg, split.level)
        cache = ImageFeatureCache(cfg.cache_dir or default_cache_dir(), key)
        self.model.eval()
        kwargs = dict(root=self.root, compute=split.features, preprocess_cfg=self.loaded.preprocess_cfg,
                      device=self.device, batch_size=cfg.feature_batch_size)
        if self.dist.is_main:
            feats = cache.get(self.image_paths, **kwargs)
        _barrier(self.dist)
        if not self.dist.is_main:
            feats = cache.get(self.image_paths, write=False, **kwargs)
        self.image_feats = feats.to(self.device)
        self.cache_key = key
        ids = torch.from_numpy(self.loaded.tokenizer(self.texts)).to(self.device)
        pad_id = getattr(getattr(self.model, "text", None), "pad_id", None)

        def batch_ids(idx):
            """Token ids of a batch; for pcclip text towers (masked mean pooling) without all-pad columns."""
            b = ids[idx]
            if pad_id is not None and len(b):
                b = b[:, : max(1, int((b != pad_id).sum(dim=1).max()))]
            return b

        tsplit = text_split(self.model, self.parts)
        if tsplit is None:
            self.embed_texts = lambda idx: self.model.encode_text(batch_ids(idx))
        else:  # the text trunk is frozen: its features are computed once, in memory
            with torch.no_grad():
                chunks = [tsplit.features(batch_ids(torch.arange(i, min(i + 256, len(ids))))) for i in range(0, len(ids), 256)]
            tfeats = torch.cat(chunks) if chunks else torch.zeros((0, 1), device=self.device)
            self.embed_texts = lambda idx: tsplit.head(tfeats[idx])

    def _fit_attribute_probe(self) -> torch.Tensor:
        """The direction of each pair text's fact [pairs, D] (`training.attribute_probe`), from a ridge
        probe of the starting model's image embeddings of the pairs' photos on the CUB attribute table."""
        import torch.nn.functional as F

        from training.attribute_probe import AttributeProbe, fact_from_source
        from training.data import AttributeTable

        facts = [fact_from_source(r.source) for r in self.pairs]
        if not self.pairs or any(f is None for f in facts):
            raise ValueError("--probe-weight needs attribute-writer pairs (`pcclip pairs --writer attributes`): "
                             "their records say which fact each text states")
        table = AttributeTable.from_cub(self.root)
        photo_class: dict[int, str] = {}
        for r, row in zip(self.pairs, self.pair_index.tolist()):
            photo_class[row[0]], photo_class[row[1]] = r.class_a, r.class_b
        unknown = sorted({c for c in photo_class.values() if c is None or not table.has_class(c)}, key=str)
        if unknown:
            raise ValueError(f"--probe-weight: classes not in the CUB attribute table: {unknown[:3]}")
        photos = sorted(photo_class)
        with torch.no_grad():
            emb = F.normalize(self.image_head(self.image_feats[photos]).float(), dim=-1).cpu().numpy()
        probe = AttributeProbe(table, emb, [photo_class[i] for i in photos], self.cfg.probe_ridge)
        log.info("attribute probe: %d photos, %d facts", len(photos), len(set(facts)))
        return torch.from_numpy(probe.directions(facts)).to(self.device)

    def _scale(self):
        if "logit-scale" in self.parts:
            return self.model.logit_scale.exp()
        return self.model.logit_scale.detach().exp()

    # state ---------------------------------------------------------------------------------------
    def _read_resume_state(self) -> dict | None:
        path = self.out / "last.pt"
        if not path.exists() and (self.out / "final.safetensors").exists():
            raise ValueError(f"the run in {self.out} has finished (final.safetensors): there is nothing to resume")
        if not path.exists():
            log.info("no %s: starting from scratch", path)
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def _trainable_state(self) -> dict:
        state = self.model.state_dict()
        return {n: state[n].detach().cpu().clone() for n in self.trainable_names}

    def _resume_extra(self, steps_per_epoch: int):
        """What `last.pt` holds beside the optimisation loop's state: the trainable weights, the config,
        and where the next step is (epoch, batch within it)."""
        def extra(step: int) -> dict:
            epoch, batch_in_epoch = divmod(step, steps_per_epoch)
            return {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "trainable": self._trainable_state(),
                    "config": dataclasses.asdict(self.cfg)}
        return extra

    def wise_state(self) -> dict:
        """Trainable weights interpolated with the base: alpha * finetuned + (1 - alpha) * base."""
        alpha = self.cfg.wise_alpha
        cur = self._trainable_state()
        if alpha >= 1.0:
            return cur
        return {n: (alpha * v.float() + (1 - alpha) * self.base_trainable[n].float()).to(v.dtype) if v.is_floating_point() else v
                for n, v in cur.items()}

    def _save_model(self, name: str, epoch: int, step: int) -> Path:
        from models.checkpoints import save_checkpoint

        current = self._trainable_state()
        self.model.load_state_dict(self.wise_state(), strict=False)
        try:
            extra = {"epoch": epoch, "step": step, "train": self.parts, "wise_alpha": self.cfg.wise_alpha,
                     "preset": self.cfg.preset, "written_by_rank": self.dist.rank, **self.start}
            path = save_checkpoint(self.out / name, self.model, self.loaded.base_spec,
                                   model_id=f"{Path(self.cfg.out).name}-{Path(name).stem}", extra=extra)
            if name == "final.safetensors" and self.loaded.info.get("trunks") is not None:  # a pcclip model
                from models.checkpoints import save_partial_weights

                save_partial_weights(self.out / "weights.safetensors", self.model, sorted(self.trainable_names),
                                     {"base": self.loaded.base_spec, "train": self.parts, "wise_alpha": self.cfg.wise_alpha})
        finally:
            self.model.load_state_dict(current, strict=False)
        return path

    def _log(self, record: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # loop ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, dist_info = self.cfg, self.dist
        from torch.utils.data import BatchSampler, DistributedSampler

        pairs_primary = len(self.pairs) > 0
        primary = self.pair_index if pairs_primary else self.caption_index
        sampler = DistributedSampler(range(len(primary)), num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        batches = BatchSampler(sampler, cfg.batch_size, drop_last=True)
        steps_per_epoch = len(batches)
        if steps_per_epoch < 1:
            raise ValueError(f"{len(primary)} training items are fewer than one batch of {cfg.batch_size} per process")
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        mix_captions = pairs_primary and len(self.captions) > 0
        cap_batch = cfg.caption_batch_size or cfg.batch_size

        params = [p for p in self.model.parameters() if p.requires_grad]
        loop = OptimisationLoop(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, decay_matrices_only=True, grad_clip=cfg.grad_clip,
            schedule=lambda s: warmup_cosine(s, cfg.warmup_steps, total), total_steps=total,
            checkpoint=self.out / "last.pt" if dist_info.is_main else None, save_every=cfg.save_every,
            extra_state=self._resume_extra(steps_per_epoch))
        objective = Objective(self.model, self.image_head, self.embed_texts, self._scale, cfg.clip_weight, cfg.probe_weight)
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            objective = DistributedDataParallel(objective, device_ids=ids)

        if self.resume_state is not None:
            st = self.resume_state
            self.model.load_state_dict({k: v.to(self.device) for k, v in st["trainable"].items()}, strict=False)
            loop.resume(st)
            log.info("resuming at epoch %d, batch %d (step %d)", st["epoch"], st["batch_in_epoch"], loop.step)
        start_step = loop.step
        if dist_info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
            self._truncate_metrics(start_step)

        epoch_batches: dict[int, list] = {}

        def step_loss(step: int):
            """The loss of global step `step`: batch `step % steps_per_epoch` of epoch `step // steps_per_epoch`."""
            epoch, b = divmod(step, steps_per_epoch)
            if epoch not in epoch_batches:
                sampler.set_epoch(epoch)
                epoch_batches.clear()
                epoch_batches[epoch] = list(batches)
            if b == 0 or step == start_step:
                set_train_mode(self.model, self.parts)
            idx = torch.tensor(epoch_batches[epoch][b], dtype=torch.long)
            pair_batch = caption_batch_ = directions = None
            if pairs_primary:
                rows = self.pair_index[idx]
                if self.pair_directions is not None:
                    directions = self.pair_directions[idx.to(self.pair_directions.device)]
                pair_batch = (self.image_feats[rows[:, 0]], self.image_feats[rows[:, 1]], rows[:, 2].to(self.device))
                if mix_captions:
                    crows = self.caption_index[caption_batch(step, len(self.captions), cap_batch, cfg.seed, dist_info)]
                    caption_batch_ = (self.image_feats[crows[:, 0]], crows[:, 1].to(self.device))
            else:
                rows = self.caption_index[idx]
                caption_batch_ = (self.image_feats[rows[:, 0]], rows[:, 1].to(self.device))
            loss, pc, clip, probe = objective(pair_batch, caption_batch_, directions)
            return loss, (pc, clip, probe)

        epoch_losses: list[float] = []

        def on_step(r: StepResult) -> None:
            if "logit-scale" in self.parts:
                with torch.no_grad():
                    self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            epoch = (r.step - 1) // steps_per_epoch
            pc, clip, probe = r.details
            epoch_losses.append(r.loss.item())
            if dist_info.is_main:
                self._log({"event": "step", "step": r.step, "epoch": epoch, "loss": r.loss.item(),
                           "pc_loss": None if pc is None else pc.item(), "clip_loss": None if clip is None else clip.item(),
                           "probe_loss": None if probe is None else probe.item(),
                           "lr": r.lr, "logit_scale": self.model.logit_scale.exp().item(),
                           "grad_norm": None if r.grad_norm is None else float(r.grad_norm)})
            # A run that stops at --max-steps inside an epoch did not complete that epoch: no epoch
            # checkpoint for it (the final weights follow), and its resume point stays mid-epoch.
            epoch_complete = r.step % steps_per_epoch == 0
            if dist_info.is_main and (epoch_complete or r.step >= total):
                if epoch_complete and cfg.save_epochs:
                    self._save_model(f"epoch-{epoch + 1:03d}.safetensors", epoch + 1, r.step)
                loop.save()
                self._log({"event": "epoch" if epoch_complete else "stopped", "epoch": epoch + 1, "step": r.step,
                           "mean_loss": float(np.mean(epoch_losses)) if epoch_losses else None})
            if epoch_complete or r.step >= total:
                epoch_losses.clear()

        step = loop.run(step_loss, on_step, desc="train", disable=None if dist_info.is_main else True)
        return self._finish(step, total)

    def _truncate_metrics(self, step: int) -> None:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))

    def _finish(self, step: int, total: int) -> dict:
        from models.checkpoints import state_fingerprint

        fingerprint = state_fingerprint(self.model)
        fingerprints = [fingerprint]
        if self.dist.enabled:
            import torch.distributed as dist

            fingerprints = [None] * self.dist.world_size
            dist.all_gather_object(fingerprints, fingerprint)
        summary = {"steps": step, "total_steps": total, "world_size": self.dist.world_size,
                   "rank_fingerprints": fingerprints,
                   "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                   "trainable_tensors": len(self.trainable_names),
                   "image_cache_key": self.cache_key, "pairs": len(self.pairs), "captions": len(self.captions)}
        if self.dist.is_main:
            summary["final"] = str(self._save_model("final.safetensors", self.cfg.epochs, step))
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            (self.out / "last.pt").unlink(missing_ok=True)  # finished: the resume point has served
        _barrier(self.dist)
        return summary


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train one run (see the module docstring); returns the summary."""
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.run()
    finally:
        if trainer.dist.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()
