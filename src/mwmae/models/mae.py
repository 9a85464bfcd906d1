"""Masked autoencoders for log-mel spectrograms: MAE, MW-MAE, MAE-AST and an SSAST-style model.

Reads top to bottom: tokens (patchify), masking, encoder, decoder, losses, embeddings.
Shapes: B batch, L = num_patches tokens, D encoder dim, Dd decoder dim, P = patch_dim values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import LAYER_NORM_EPS, Block, PatchEmbed, lecun_normal_, sincos_1d, sincos_2d

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_CONFIG_KEY = "mwmae_model_config"  # safetensors metadata: the config, as JSON


@dataclass
class MAEOutput:
    """What a pretraining forward pass returns."""

    loss: torch.Tensor  # scalar, weighted sum of the losses below
    pred: torch.Tensor  # (B, L, P) predicted patches (normalised space if norm_pix_loss)
    mask: torch.Tensor  # (B, L) 1 = masked (removed), 0 = kept
    target: torch.Tensor  # (B, L, P)
    ids_restore: torch.Tensor  # (B, L)
    reconstruction_loss: torch.Tensor
    contrastive_loss: torch.Tensor | None = None


class MaskedAutoencoder(nn.Module):
    """One class for every preset family; `ModelConfig` decides the variant:

    - MAE (reference baseline): global attention everywhere, cls token.
    - MW-MAE: `decoder_window_sizes` (and optionally `encoder_window_sizes`), no cls token.
    - MAE-AST: 1-D positions, chunked or random masking, `contrastive_weight` > 0 (InfoNCE).
    - SSAST-style: `encoder_sees_all`, the encoder runs on every token with mask tokens.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        L = c.num_patches
        n_extra = 1 if c.use_cls_token else 0

        # ---- encoder ----------------------------------------------------------------------
        self.patch_embed = PatchEmbed(c.patch_size, c.embed_dim)
        if c.use_cls_token:
            self.cls_token = nn.Parameter(torch.randn(1, 1, c.embed_dim) * 0.02)
        if c.encoder_sees_all:
            self.encoder_mask_token = nn.Parameter(torch.randn(1, 1, c.embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(
            self._initial_pos_embed(c.embed_dim, two_d=c.pos_embed == "2d", n_extra=n_extra),
            requires_grad=c.trainable_pos_embed,
        )
        self.blocks = _blocks(c, c.depth, c.embed_dim, c.num_heads, c.encoder_window_sizes)
        self.norm = nn.LayerNorm(c.embed_dim, eps=LAYER_NORM_EPS)

        # ---- decoder ----------------------------------------------------------------------
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        if not c.encoder_sees_all:
            self.mask_token = nn.Parameter(torch.randn(1, 1, c.decoder_embed_dim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(
            self._initial_pos_embed(c.decoder_embed_dim, two_d=False, n_extra=n_extra),
            requires_grad=c.trainable_pos_embed,
        )
        self.decoder_blocks = _blocks(
            c, c.decoder_depth, c.decoder_embed_dim, c.decoder_num_heads, c.decoder_window_sizes
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=LAYER_NORM_EPS)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_dim)
        lecun_normal_(self.decoder_embed)
        lecun_normal_(self.decoder_pred)
        if c.contrastive_weight > 0:
            self.decoder_pred_contrast = nn.Linear(c.decoder_embed_dim, c.patch_dim)
            lecun_normal_(self.decoder_pred_contrast)
        assert L == self.pos_embed.shape[1] - n_extra

    def _initial_pos_embed(self, dim: int, two_d: bool, n_extra: int) -> torch.Tensor:
        gt, gf = self.config.grid_size
        table = sincos_2d(dim, gt, gf) if two_d else sincos_1d(dim, np.arange(gt * gf))
        if n_extra:  # the cls slot: a row of zeros in front
            table = np.concatenate([np.zeros((n_extra, dim)), table], axis=0)
        return torch.from_numpy(table).float()[None]

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.config.grid_size

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.config.patch_size

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def embedding_size(self) -> int:
        """Size of one time step of `embed`: grid_f * embed_dim."""
        return self.grid_size[1] * self.config.embed_dim

    def _as_image(self, spec: torch.Tensor) -> torch.Tensor:
        """Accept (B, T, F) or (B, 1, T, F); check the size. Returns (B, 1, T, F)."""
        if spec.ndim == 3:
            spec = spec[:, None]
        c = self.config
        if (
            spec.ndim != 4
            or spec.shape[1] != 1
            or tuple(spec.shape[2:]) != (c.num_frames, c.num_mels)
        ):
            raise ValueError(
                f"expected a spectrogram batch (B, 1, {c.num_frames}, {c.num_mels}) or "
                f"(B, {c.num_frames}, {c.num_mels}), got {tuple(spec.shape)}"
            )
        return spec

    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, F) -> (B, L, pt * pf); token t * gf + f, values row-major (p * pf + q)."""
        spec = self._as_image(spec)
        B = spec.shape[0]
        (pt, pf), (gt, gf) = self.patch_size, self.grid_size
        x = spec.reshape(B, gt, pt, gf, pf)
        return x.permute(0, 1, 3, 2, 4).reshape(B, gt * gf, pt * pf)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, pt * pf) -> (B, 1, T, F)."""
        B = patches.shape[0]
        (pt, pf), (gt, gf) = self.patch_size, self.grid_size
        x = patches.reshape(B, gt, gf, pt, pf).permute(0, 1, 3, 2, 4)
        return x.reshape(B, 1, gt * pt, gf * pf)

    # ---- masking ----------------------------------------------------------------------------
    def masking_noise(self, batch: int, device=None, generator=None) -> torch.Tensor:
        """(B, L) noise whose stable argsort decides the mask: the lowest len_keep are kept."""
        c = self.config
        if c.masking == "chunk":
            return chunk_masking_noise(
                batch, c.grid_size, c.len_keep(), c.chunk_sizes, device=device, generator=generator
            )
        return torch.rand(batch, c.num_patches, device=device, generator=generator)

    def random_masking(
        self, x: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the tokens with the lowest noise. x: (B, L, D), noise: (B, L).

        Returns x_kept (B, K, D), mask (B, L) 1 = removed, ids_restore (B, L), ids_keep (B, K).
        """
        B, L, D = x.shape
        if noise.shape != (B, L):
            raise ValueError(f"masking noise must have shape {(B, L)}, got {tuple(noise.shape)}")
        len_keep = self.config.len_keep(L)
        ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # ties keep the earlier token
        ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))
        mask = torch.ones(B, L, device=x.device, dtype=x.dtype)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore, ids_keep

    # ---- encoder ----------------------------------------------------------------------------
    def _embed_tokens(self, spec: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus positions, (B, L, D)."""
        x = self.patch_embed(self._as_image(spec))
        offset = 1 if self.config.use_cls_token else 0
        return x + self.pos_embed[:, offset:]

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.use_cls_token:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_encoder(
        self, spec: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked encoder pass.

        Returns latent (B, [1 +] K, D) (K kept tokens, or all L for SSAST-style models),
        mask (B, L), ids_restore (B, L), ids_keep (B, K).
        """
        x = self._embed_tokens(spec)  # (B, L, D)
        if noise is None:
            noise = self.masking_noise(x.shape[0], device=x.device)
        if self.config.encoder_sees_all:
            # SSAST-style: masked tokens are replaced (positions kept), every token is encoded.
            _, mask, ids_restore, ids_keep = self.random_masking(x, noise)
            offset = 1 if self.config.use_cls_token else 0
            masked_tokens = (self.encoder_mask_token + self.pos_embed[:, offset:]).to(x.dtype)
            x = torch.where(mask[..., None].bool(), masked_tokens.expand_as(x), x)
            return self._run_encoder(x), mask, ids_restore, ids_keep
        x, mask, ids_restore, ids_keep = self.random_masking(x, noise)
        return self._run_encoder(x), mask, ids_restore, ids_keep

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        """Unmasked encoder output for all tokens, (B, L, D), cls token dropped."""
        x = self._run_encoder(self._embed_tokens(spec))
        return x[:, 1:] if self.config.use_cls_token else x

    def embed(self, spec: torch.Tensor) -> torch.Tensor:
        """Per-time-step embeddings (B, grid_t, grid_f * D): 'b (t f) d -> b t (f d)'."""
        x = self.forward_features(spec)
        gt, gf = self.grid_size
        return x.reshape(x.shape[0], gt, gf * x.shape[-1])

    # ---- decoder ----------------------------------------------------------------------------
    def forward_decoder(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """latent (B, [1 +] K, D), ids_restore (B, L) -> predicted patches (B, L, P)."""
        x = self.decoder_embed(latent)  # (B, [1 +] K, Dd)
        has_cls = self.config.use_cls_token
        if not self.config.encoder_sees_all:
            tokens = x[:, 1:] if has_cls else x
            B, K, Dd = tokens.shape
            L = ids_restore.shape[1]
            filler = self.mask_token.to(tokens.dtype).expand(B, L - K, Dd)
            tokens = torch.cat([tokens, filler], dim=1)  # (B, L, Dd), shuffled order
            tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, Dd))
            x = torch.cat([x[:, :1], tokens], dim=1) if has_cls else tokens
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        if has_cls:
            x = x[:, 1:]
        pred = self.decoder_pred(x)
        return (pred, x) if return_hidden else pred

    # ---- losses -----------------------------------------------------------------------------
    def target_patches(self, spec: torch.Tensor) -> torch.Tensor:
        target = self.patchify(spec).detach()
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True, unbiased=False)  # jnp.var: population
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    @staticmethod
    def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over patch values, then the average over masked patches only."""
        per_patch = (pred - target).square().mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    @staticmethod
    def info_nce(
        scores_from: torch.Tensor, target: torch.Tensor, ids_masked: torch.Tensor
    ) -> torch.Tensor:
        """MAE-AST InfoNCE: each masked prediction must pick its own patch among the clip's
        masked patches (raw dot products, no temperature). Shapes (B, L, P), ids (B, M)."""
        P = target.shape[-1]
        c = torch.gather(scores_from, 1, ids_masked[..., None].expand(-1, -1, P))
        t = torch.gather(target, 1, ids_masked[..., None].expand(-1, -1, P))
        logits = c @ t.transpose(1, 2)  # (B, M, M)
        labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    def forward(self, spec: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        spec = self._as_image(spec)
        latent, mask, ids_restore, _ = self.forward_encoder(spec, noise)
        pred, hidden = self.forward_decoder(latent, ids_restore, return_hidden=True)
        target = self.target_patches(spec)
        rec = self.masked_mse(pred, target, mask)
        loss = self.config.reconstruction_weight * rec
        nce = None
        if self.config.contrastive_weight > 0:
            len_keep = self.config.len_keep()
            ids_masked = torch.argsort(ids_restore, dim=1)[:, len_keep:]  # = ids_shuffle tail
            nce = self.info_nce(self.decoder_pred_contrast(hidden), target, ids_masked)
            loss = loss + self.config.contrastive_weight * nce
        return MAEOutput(
            loss=loss,
            pred=pred,
            mask=mask,
            target=target,
            ids_restore=ids_restore,
            reconstruction_loss=rec,
            contrastive_loss=nce,
        )

    # ---- persistence ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `model.safetensors` (no pickle) and `config.json` into `directory`.

        config.json records the weights' SHA-256, and the weights' metadata carries the model
        config, so `mwmae.from_pretrained` can detect a damaged file or an edited config."""
        from mwmae import __version__
        from mwmae._io import atomic_write_text, save_weights

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_config = self.config.to_dict()
        digest = save_weights(
            directory / WEIGHTS_NAME,
            self.state_dict(),
            metadata={"format": "pt", WEIGHTS_CONFIG_KEY: json.dumps(model_config)},
        )
        meta = {
            "format": "mwmae",
            "mwmae_version": __version__,
            "weights_sha256": digest,
            "model": model_config,
        }
        # Weights first: a config.json on disk always describes the weights beside it.
        atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2))
        return directory


def _blocks(
    c: ModelConfig, depth: int, dim: int, num_heads: int, window_sizes: list[int] | None
) -> nn.ModuleList:
    """`depth` transformer blocks of the encoder or decoder; shifted windows on odd blocks."""
    return nn.ModuleList(
        Block(
            dim,
            num_heads,
            c.mlp_ratio,
            window_sizes,
            shift=c.shift_windows and i % 2 == 1,
            mwmha_impl=c.mwmha_impl,
        )
        for i in range(depth)
    )


def chunk_masking_noise(
    batch: int,
    grid_size: tuple[int, int],
    len_keep: int,
    chunk_sizes: tuple[int, ...] = (3, 4, 5),
    device=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masking noise that masks contiguous chunks (MAE-AST / SSAST style), per sample.

    Each sample draws a chunk size c from `chunk_sizes` and paints c x c blocks of patches
    (time x frequency, clipped at the grid edge, no wrap-around) at random positions until
    L - len_keep tokens are covered; on a frame grid (one frequency patch) a chunk is a run of
    2c - 1 frames, as in MAE-AST. The earliest-painted tokens get the highest noise, so the
    usual argsort masking removes exactly the first L - len_keep painted tokens.
    """
    gt, gf = grid_size
    L = gt * gf
    n_mask = L - len_keep
    gen_device = generator.device if generator is not None else "cpu"
    sizes = torch.tensor(chunk_sizes)
    c = sizes[
        torch.randint(len(chunk_sizes), (batch,), generator=generator, device=gen_device).cpu()
    ]  # (B,)
    ct = c if gf > 1 else 2 * c - 1
    cf = torch.minimum(c, torch.tensor(gf)) if gf > 1 else torch.ones_like(c)
    max_t, max_f = int(ct.max()), int(cf.max())
    # Enough chunk draws that the painted area almost surely reaches n_mask; a shortfall is
    # filled with random tokens below.
    n_draws = int(4 * n_mask / max(1, int((ct * cf).min())) + 8)
    t0 = torch.randint(gt, (batch, n_draws), generator=generator, device=gen_device).cpu()
    f0 = torch.randint(gf, (batch, n_draws), generator=generator, device=gen_device).cpu()
    a = torch.arange(max_t)
    b = torch.arange(max_f)
    tt = t0[:, :, None, None] + a[None, None, :, None]  # (B, K, max_t, 1)
    ff = f0[:, :, None, None] + b[None, None, None, :]  # (B, K, 1, max_f)
    valid = (
        (a[None, None, :, None] < ct[:, None, None, None])
        & (b[None, None, None, :] < cf[:, None, None, None])
        & (tt < gt)
        & (ff < gf)
    )
    token = (tt * gf + ff).expand(-1, -1, max_t, max_f)
    order = torch.arange(n_draws * max_t * max_f).reshape(1, n_draws, max_t, max_f)
    order = order.expand(batch, -1, -1, -1)
    big = n_draws * max_t * max_f
    first_painted = torch.full((batch, L), big, dtype=torch.long)
    first_painted.scatter_reduce_(
        1,
        torch.where(valid, token, 0).flatten(1),
        torch.where(valid, order, big).flatten(1),
        reduce="amin",
    )
    tie = torch.rand(batch, L, generator=generator, device=gen_device).cpu()
    painted = first_painted < big
    # Painted tokens: noise in (1, 2], earliest painted highest. Unpainted: uniform [0, 1).
    noise = torch.where(painted, 2.0 - first_painted.float() / big, tie)
    return noise.to(device) if device is not None else noise
