"""What measures rather than serves: the timed inference benchmark (rows from stock nnU-Net to the optimized
predictor), its real-scale variant, and the learning benchmark over seeds and commits."""
