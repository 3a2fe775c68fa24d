"""ESOL's deformable samplers (§3.2–3.3, Eq. (3)–(4), Appendix A.1.1 and A.1.3).

A sampler replaces one of the classifier's two extra convolutions:

    F'(p0) = sum_{p_n in R} w(p_n) · x(p0 + p_n + Δp_n)                                  Eq. (4)

``w`` are the *regular* weights, copied from the trained baseline convolution and frozen (A.1.3);
the offsets ``Δp_n`` come from an *offset branch* (a convolution on the sampler's input) that
starts at zero, so an untrained sampler reproduces the baseline convolution exactly. Only the
offset branch learns. Switches cover the paper's ablations:

- ``offsets=False`` (Table 5 without DT_e / DT_s): no offset branch, the plain frozen convolution;
- ``deformable=False`` (Appendix A.1.1): no offset branch, but the regular weights learn;
- ``train_regular=True`` (Appendix A.1.3): offsets and regular weights both learn.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

__all__ = [
    "DeformableSampler",
    "ExpansionSampler",
    "ShrinkageSampler",
    "sampling_points",
    "kernel_grid",
    "deform_conv2d_sampled",
]


def deform_conv2d_sampled(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. (4) via ``grid_sample``: the same result as ``torchvision.ops.deform_conv2d`` (stride 1,
    'same' padding, zeros outside the map), and faster on CPU (``benchmarks/compare.py`` measures it).

    Every kernel point ``n`` samples ``x`` bilinearly at ``p0 + p_n + Δp_n``; the ``k·k`` sampled
    maps are then contracted with the regular weights by one 1×1 convolution. torchvision's CPU
    kernel is a serial im2col loop whose backward pass dominates the ESOL stages on a laptop;
    tests check both paths agree in values and gradients.
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    grid = kernel_grid(k).to(x)  # (k·k, 2) as (dy, dx)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    off = offset.view(b, k * k, 2, h, w)
    py = ys + grid[:, 0].view(1, -1, 1, 1) + off[:, :, 0]  # (B, k·k, H, W) absolute row
    px = xs + grid[:, 1].view(1, -1, 1, 1) + off[:, :, 1]
    norm = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1)  # grid_sample's (x, y)
    sampled = F.grid_sample(
        x, norm.view(b, k * k * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B, C, k·k·H, W)
    sampled = sampled.view(b, c, k * k, h, w).reshape(b, c * k * k, h, w)
    return F.conv2d(sampled, weight.reshape(weight.shape[0], c * k * k, 1, 1), bias)


class DeformableSampler(nn.Module):
    """A deformable convolution whose regular weights come from a trained ``nn.Conv2d`` (Eq. (4)).

    Args:
        conv: the baseline's extra convolution (stride 1, ``padding = k // 2``, no groups); its
            weight (and bias, if any) are copied.
        offsets: learn offsets (the deformable transformation, DT). False: behave as ``conv``.
        deformable: False reproduces Appendix A.1.1 (no deformable layer; the weights learn instead).
        train_regular: let the regular weights learn too (Appendix A.1.3).
    """

    def __init__(
        self, conv: nn.Conv2d, *, offsets: bool = True, deformable: bool = True, train_regular: bool = False
    ) -> None:
        super().__init__()
        if conv.stride != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("a sampler replaces a stride-1, dilation-1, ungrouped convolution")
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or conv.padding != (k // 2, k // 2):
            raise ValueError(
                f"a sampler needs a square kernel with 'same' padding, got {conv.kernel_size}, padding {conv.padding}"
            )
        self.kernel_size = k
        self.padding = k // 2
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=bool(train_regular or not deformable))
        self.bias = (
            nn.Parameter(conv.bias.detach().clone(), requires_grad=self.weight.requires_grad)
            if conv.bias is not None
            else None
        )
        self.use_offsets = bool(offsets and deformable)
        self.offset_conv: nn.Conv2d | None = None
        if self.use_offsets:
            self.offset_conv = nn.Conv2d(conv.in_channels, 2 * k * k, k, padding=self.padding)
            nn.init.zeros_(self.offset_conv.weight)  # Δp = 0 at the start: the baseline exactly
            nn.init.zeros_(self.offset_conv.bias)
        self.last_offset_magnitude: float = 0.0  # mean |Δp| (feature cells) of the last forward

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    def offsets(self, x: torch.Tensor) -> torch.Tensor | None:
        """Offsets ``(B, 2·k·k, H, W)`` as ``(Δy, Δx)`` pairs per kernel point, or None without DT."""
        return None if self.offset_conv is None else self.offset_conv(x)

    def forward(self, x: torch.Tensor, extra_offset: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. (4); ``extra_offset`` (another sampler's offsets on the same input) adds to this one's."""
        offset = self.offsets(x)
        if extra_offset is not None:
            offset = extra_offset if offset is None else offset + extra_offset
        if offset is None:
            return self.regular(x)
        self.last_offset_magnitude = float(offset.detach().abs().mean())
        if x.is_cuda:
            return deform_conv2d(x, offset, self.weight, self.bias, padding=(self.padding, self.padding))
        return deform_conv2d_sampled(x, offset, self.weight, self.bias)

    def regular(self, x: torch.Tensor) -> torch.Tensor:
        """The plain convolution with the regular weights (no offsets)."""
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class ExpansionSampler(DeformableSampler):
    """ES (§3.2): replaces the first extra convolution; trained by loss maximisation, Eq. (5)."""


class ShrinkageSampler(DeformableSampler):
    """SS (§3.3): replaces the second extra convolution; trained with the area loss, Eq. (6)."""


def kernel_grid(kernel_size: int) -> torch.Tensor:
    """The regular grid R of Eq. (3) as ``(k·k, 2)`` ``(dy, dx)`` pairs, row-major (deform_conv2d's order)."""
    r = torch.arange(kernel_size, dtype=torch.float32) - kernel_size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)


@torch.no_grad()
def sampling_points(
    sampler: DeformableSampler, x: torch.Tensor, y: int, x_pos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the kernel at output cell ``(y, x_pos)`` samples, before and after the learned offsets.

    Returns ``(regular, deformed)``, each ``(k·k, 2)`` in feature-map ``(row, col)`` coordinates,
    for the first image of ``x`` (the sampler's input). Multiply by the backbone's output stride to
    draw them on the image.
    """
    grid = kernel_grid(sampler.kernel_size) + torch.tensor([float(y), float(x_pos)])
    offset = sampler.offsets(x[:1])
    if offset is None:
        return grid, grid.clone()
    delta = offset[0, :, y, x_pos].reshape(-1, 2).float().cpu()
    return grid, grid + delta
