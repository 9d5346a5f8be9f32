"""cocotb verification of the AXI4 manager (`rtl.axi_port.AxiPort`) against cocotbext-axi's
`AxiRam`, with random pauses on every AXI channel and back-pressure on every client stream."""
