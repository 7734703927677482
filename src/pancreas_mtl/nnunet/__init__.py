"""How the workflow reaches nnU-Net: its folders, environment variables and command-line tools."""
