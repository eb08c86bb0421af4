"""The networks and losses of VAAL (Sinha et al., ICCV 2019), see :mod:`strategies.vaal`.

:class:`AdversarialVAE` holds a variational autoencoder (a small convolutional one for
images ``(C, H, W)``, an MLP for feature vectors such as the 2-D toys) and the
discriminator, an MLP on the VAE's latent mean. Its ``forward`` is the discriminator's
logit of "labelled" for every input, so the usual batched inference helpers score a view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvVAE(nn.Module):
    """Two stride-2 4x4 conv + BatchNorm + ReLU blocks down, two transposed ones up.

    Built for one input shape ``(C, H, W)``; a decoder output of another size (H or W not
    divisible by 4) is resized to ``(H, W)`` bilinearly.
    """

    def __init__(self, shape: tuple[int, ...], latent: int, width: int) -> None:
        super().__init__()
        channels, height, width_px = shape
        self.size = (height, width_px)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        with torch.no_grad():
            code = self.encoder.eval()(torch.zeros(1, channels, height, width_px))
        self.encoder.train()
        self.code_shape = tuple(code.shape[1:])
        flat = code.numel()
        self.mean = nn.Linear(flat, latent)
        self.log_var = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, channels, 4, 2, 1),
        )

    def encode(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log sigma^2)`` of q(z|x)."""
        code = self.encoder(inputs).flatten(1)
        return self.mean(code), self.log_var(code)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The reconstruction, shaped like the input."""
        out = self.decoder(F.relu(self.expand(latent)).view(-1, *self.code_shape))
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return out


class MLPVAE(nn.Module):
    """Two ReLU hidden layers each way, for flat feature vectors."""

    def __init__(self, features: int, latent: int, width: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(features, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
        )
        self.mean = nn.Linear(width, latent)
        self.log_var = nn.Linear(width, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, features),
        )

    def encode(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log sigma^2)`` of q(z|x)."""
        code = self.encoder(inputs)
        return self.mean(code), self.log_var(code)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The reconstruction."""
        return self.decoder(latent)


class AdversarialVAE(nn.Module):
    """``vae`` (:class:`ConvVAE` or :class:`MLPVAE`) and ``discriminator`` D on mu."""

    def __init__(
        self, shape: tuple[int, ...], latent: int, width: int, discriminator_width: int
    ) -> None:
        super().__init__()
        self.vae: ConvVAE | MLPVAE
        if len(shape) == 3:
            self.vae = ConvVAE(shape, latent, width)
        elif len(shape) == 1:
            self.vae = MLPVAE(shape[0], latent, width)
        else:
            raise ValueError(f"vaal: inputs of shape {shape} are neither (C, H, W) nor (D,)")
        self.discriminator = nn.Sequential(
            nn.Linear(latent, discriminator_width),
            nn.ReLU(inplace=True),
            nn.Linear(discriminator_width, discriminator_width),
            nn.ReLU(inplace=True),
            nn.Linear(discriminator_width, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """D's logit that each input is labelled, shape ``(B, 1)`` (sigmoid: probability)."""
        mean, _ = self.vae.encode(inputs)
        return self.discriminator(mean)


def reparameterise(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``z = mu + sigma * noise`` (noise from torch's global RNG)."""
    return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)


def vae_loss(
    network: AdversarialVAE, inputs: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One half of equation 1 for a batch: ``(reconstruction + beta KL, mu)``.

    Reconstruction: mean squared error per input element (the negative Gaussian
    log-likelihood up to constants); KL(q(z|x) || N(0, I)) summed over latent
    dimensions, averaged over the batch and divided by the input size so both terms
    have the same scale for any input size.
    """
    mean, log_var = network.vae.encode(inputs)
    reconstruction = network.vae.decode(reparameterise(mean, log_var))
    mse = F.mse_loss(reconstruction, inputs)
    kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(dim=1).mean()
    return mse + beta * kl / inputs[0].numel(), mean


def labelled_bce(logits: torch.Tensor, labelled: bool) -> torch.Tensor:
    """``-E[log D]`` (``labelled``) or ``-E[log(1 - D)]`` on D's logits."""
    target = torch.full_like(logits, 1.0 if labelled else 0.0)
    return F.binary_cross_entropy_with_logits(logits, target)
