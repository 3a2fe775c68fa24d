"""The method's operations, the paper's equations as functions of tensors and arrays.

Class activation maps (:mod:`~esol_lib.method.cam`), the ESOL losses (:mod:`~esol_lib.method.losses`),
IRN's affinities and random walk (:mod:`~esol_lib.method.irn`), the dense CRF (:mod:`~esol_lib.method.crf`),
the scores (:mod:`~esol_lib.method.metrics`), DeepLab-v2's recipe (:mod:`~esol_lib.method.seg_recipe`) and the
offset-gradient measurements (:mod:`~esol_lib.method.diagnostics`). They read no run folder and train
nothing on their own; the steps in :mod:`esol_lib.steps` do. This package's ``__init__`` imports nothing,
so importing one module never runs another.
"""
