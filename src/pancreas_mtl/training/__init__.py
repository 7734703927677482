"""Training: the stage-1/2 nnU-Net trainers, their losses, checkpoint selection and settings."""
