"""cocotb testbenches, the simulator runner, HDL memory/link models and the RTL device backend."""
