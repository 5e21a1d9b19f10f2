"""edgekd: distil a big vision model into a small one for an edge device, export it, and measure it."""

__version__ = "0.1.0"
