"""Amaranth components that implement `hw/` exactly; `rtl.build` writes their Verilog."""
