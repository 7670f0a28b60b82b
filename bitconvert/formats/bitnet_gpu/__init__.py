"""``bitnet-gpu``: microsoft/BitNet's W2A8 GPU checkpoint (``gpu/convert_checkpoint.py``'s two torch.save files)."""
