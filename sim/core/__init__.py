"""End-to-end simulation of the kernel: HDL memory and link models, the run driver."""
