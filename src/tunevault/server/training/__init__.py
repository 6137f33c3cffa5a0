"""Training: chat data, tokenization with loss masking, 4-bit QLoRA setup, the training loop, eval, checkpoints and the model store."""
