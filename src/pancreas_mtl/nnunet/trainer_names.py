"""The names nnU-Net knows the project's trainers by (``-tr``, model folder names, ``checkpoint['trainer_name']``).

The trainer classes in :mod:`pancreas_mtl.training.trainers` carry these names (a test checks it); the workflow
and the real-scale benchmark, which must not import the training code, use them from here.
"""

STAGE1_TRAINER = "nnUNetTrainerPancreasSeg"
#: stage-1 trainer by the config's ``training.stage1.trainer``: the project's, or nnU-Net's own on a set budget
STAGE1_TRAINERS = {"project": STAGE1_TRAINER, "stock": "nnUNetTrainerStockBudget"}
#: stage-2 trainer by classification head (the config's ``training.head``)
STAGE2_TRAINERS = {
    "roi_attention": "nnUNetTrainerPancreasMultiTask",
    "global_pool": "nnUNetTrainerPancreasMultiTaskGlobalPool",
}
