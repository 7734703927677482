"""The names nnU-Net knows the project's trainers by (``-tr``, model folder names, ``checkpoint['trainer_name']``).

The trainer classes in :mod:`pancreas_mtl.training.trainers` carry these names (a test checks it); the workflow
and the real-scale benchmark, which must not import the training code, use them from here.
"""

STAGE1_TRAINER = "nnUNetTrainerPancreasSeg"
#: stage-2 trainer by classification head (the config's ``training.head``)
STAGE2_TRAINERS = {
    "roi_attention": "nnUNetTrainerPancreasMultiTask",
    "global_pool": "nnUNetTrainerPancreasMultiTaskGlobalPool",
}
