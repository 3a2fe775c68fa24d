"""The paper's numbers, in one place: every table of the book that sets a run beside the paper reads them here.

All values are mIoU, precision, recall or F1 in percent, as printed in ESOL (NeurIPS 2022). The paper
reports two baseline seeds on PASCAL VOC train: 48.8 in Table 1 (IRN's CAM, as IRN reports it) and
48.4 in Table 5 and §4.1 (the authors' own baseline, from which ESOL gains +5.2). Each table below
keeps the number its own table prints.
"""

from __future__ import annotations

__all__ = [
    "TABLE1",
    "TABLE5",
    "TABLE5_BASELINE_SEED",
    "TABLE5_ESOL_SEED",
    "TABLE6",
    "APPENDIX_A11",
    "for_dataset",
]

#: Table 1 (train: Seed, seed + CRF, IRN Mask) with Table 3 (DeepLab-v2, val and test) for VOC and
#: Table 2 (val) for COCO. "baseline" is the paper's "IRN" row (the plain CAM refined by IRN),
#: "shrinkage" its "ESOL (Ours)" row.
TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "voc12": {
        "baseline": {"Seed": 48.8, "CRF": 53.7, "Mask": 66.3, "val": 63.5, "test": 64.8},
        "shrinkage": {"Seed": 53.6, "CRF": 61.4, "Mask": 68.7, "val": 69.9, "test": 69.3},
    },
    "coco14": {
        "baseline": {"Seed": 33.5, "Mask": 42.9, "val": 41.4},
        "shrinkage": {"Seed": 35.7, "Mask": 44.6, "val": 42.6},
    },
}

#: Table 5 (CAM seed mIoU on VOC train): each ESOL component switched off, by ablation variant name
#: (:data:`esol_lib.book.ablation.TABLE5`), and its first and last rows.
TABLE5: dict[str, float] = {
    "no-dte-fl": 48.5,
    "no-dte": 49.1,
    "no-fl": 51.8,
    "no-dts-area": 50.1,
    "no-dts": 50.9,
    "no-area": 52.8,
}
TABLE5_BASELINE_SEED = 48.4
TABLE5_ESOL_SEED = 53.6

#: Appendix A.1.1: loss maximisation on a plain convolution (no deformable offsets), seed mIoU on VOC train.
APPENDIX_A11 = 40.3

#: Table 6 (VOC train): (precision, recall, F1) of the seeds; the baseline row is IRN's CAM.
TABLE6: dict[str, tuple[float, float, float]] = {
    "baseline": (66.0, 66.4, 66.2),
    "expansion": (41.1, 90.9, 56.6),
    "shrinkage": (67.1, 79.5, 72.7),
}


def for_dataset(profile: str) -> tuple[str, dict[str, dict[str, float]]]:
    """The paper's dataset for a profile and its Table 1 rows: COCO for ``coco14``, else PASCAL VOC.

    Profiles other than ``voc12`` and ``coco14`` are compared with VOC's numbers, not one to one.
    """
    dataset = "coco14" if profile == "coco14" else "voc12"
    return dataset, TABLE1[dataset]
