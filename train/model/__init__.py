"""The model side of training: the network (`network`), what of it trains (`trainable`), pretrained
weights and their input normalisation (`weights`), and the model file with its card (`file`), the
contract with evaluation and scoring."""

from train.model.network import build_model

__all__ = ["build_model"]
