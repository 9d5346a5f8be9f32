"""cocotb verification of `rtl.arith` against `hw.numerics`: every unit in one simulation
build, driven from vector files by an HDL harness with random valid/ready stalls."""
