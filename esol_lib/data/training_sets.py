"""The datasets the training steps read besides :class:`~esol_lib.data.voc.VOCSegmentation` itself.

:class:`LabelledOnly` shows the CAM classifier an image and its image-level label, never the mask;
:class:`PseudoMaskDataset` pairs the images of a split with a run's pseudo masks, checked against the
checksums refine recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from esol_lib.data.voc import VOCSegmentation, load_image, load_mask
from esol_lib.runtime.errors import DatasetError
from esol_lib.runtime.freshness import damaged, read_verified


class LabelledOnly(torch.utils.data.Dataset):
    """Training items: the image and its image-level label (the mask is never shown to the classifier)."""

    def __init__(self, base: VOCSegmentation) -> None:
        self.base = base
        self.labels = base.labels()  # from the masks, read once and cached on disk: no mask decode per step

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        image_id = self.base.ids[index]
        return {
            "id": image_id,
            "image": load_image(self.base.image_path(image_id)),
            "label": torch.from_numpy(self.labels[index].copy()),
        }


class PseudoMaskDataset(torch.utils.data.Dataset):
    """Images from the dataset root, masks from a run's ``pseudo_masks/<stage>/`` folder.

    Items are ``{'id', 'image': (H, W, 3) uint8, 'mask': (H, W) uint8}`` (0 = background,
    255 = void/uncertain). The pseudo masks live in the run folder, not under the data root, which
    is why :class:`~esol_lib.data.VOCSegmentation` is not used directly.
    """

    def __init__(
        self, image_root: str | Path, ids: Sequence[str], mask_dir: str | Path, num_classes: int, fix: str = ""
    ) -> None:
        self.image_dir = Path(image_root) / "JPEGImages"
        self.mask_dir = Path(mask_dir)
        self.ids = list(ids)
        self.num_classes = num_classes
        #: The command that remakes a damaged pseudo mask (they are derived: never "remove the id").
        self.fix = fix or "run `esol refine` for this stage (it remakes what is missing)"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        image = load_image(self.image_dir / f"{image_id}.jpg")
        path = self.mask_dir / f"{image_id}.png"
        read_verified(path, self.fix)  # against the checksum recorded when refine wrote it
        try:
            mask = load_mask(path, self.num_classes)
        except DatasetError as e:
            raise damaged(path, self.fix, str(e).split(";")[0].removeprefix(f"mask {path} is ")) from None
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"pseudo mask {self.mask_dir / (image_id + '.png')} is {mask.shape[1]}x{mask.shape[0]} "
                f"but its image is {image.shape[1]}x{image.shape[0]}; re-run `esol refine`"
            )
        return {"id": image_id, "image": image, "mask": mask}
