"""mwmae: multi-window masked autoencoders for audio."""

__version__ = "0.1.0"
