"""GPU kernels (Triton, optional) with torch fallbacks, each checked against a torch reference."""
