"""The accelerator's contract: configuration, instruction set, bit-accurate numerics, timing
model and board packaging. `hw` imports nothing else of the project (numpy only): the RTL and
the host are both generated from or checked against it."""
