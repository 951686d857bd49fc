"""Where ML researchers work: MONAI workflows, training and validation loops, TorchIO patches."""
