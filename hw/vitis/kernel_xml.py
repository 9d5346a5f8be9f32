"""`kernel.xml`: the XRT description of the kernel (UG1702, "RTL Kernel XML File"), generated
from the register map (`hw.regmap`) and the kernel top's ports.

The RTL build (`tandem rtl build`, `rtl.build`) writes module `RTL_MODULE` with Amaranth's port
names (`m_axi_hbm0__awaddr`, `clk`, `rst`, simulation trace ports); the board kernel
`KERNEL_NAME` is a generated wrapper around it (`hw.vitis.wrapper`) with the names Vitis wants.

Every argument of the map becomes an `<arg>` at its offset and size: 64-bit pointers with
addressQualifier 1 on the `m_axi` port the map names, 32-bit scalars with addressQualifier 0
on `s_axi_control`. The ring links are AXI4-Stream ports (addressQualifier 4). The widths of
the ports are read from the Verilog that the RTL build writes (`KernelPorts.from_verilog`),
and checked against the config, so no width is written here a second time.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..config import AccelConfig, ConfigError
from ..regmap import KERNEL_MODULE, XRT_KERNEL, regmap

__all__ = ["KERNEL_NAME", "RING_PORTS", "RTL_MODULE", "KernelPorts", "kernel_xml",
           "verilog_ports"]

#: The board kernel: the wrapper module, the .xo and the compute units (`tandem_1`).
KERNEL_NAME = XRT_KERNEL
#: The module the RTL build writes (`rtl.build.KERNEL`), which the wrapper instantiates.
RTL_MODULE = KERNEL_MODULE
#: The ring's AXI4-Stream ports, (name, direction as kernel.xml spells it).
RING_PORTS = (("ring_tx", "write_only"), ("ring_rx", "read_only"))


@dataclass(frozen=True)
class KernelPorts:
    """Widths of the kernel top's interfaces, as the RTL has them."""

    hbm_data_bits: int  #: data width of every m_axi_hbm<k> port
    hbm_addr_bits: int  #: address width of every m_axi_hbm<k> port
    control_addr_bits: int  #: address width of s_axi_control
    ring_data_bits: int  #: TDATA width of ring_tx / ring_rx
    ring_user_bits: int  #: TUSER width of ring_tx / ring_rx

    def check(self, config: AccelConfig) -> None:
        """Raise ConfigError unless these ports are those of a kernel built for `config`."""
        want = {"hbm_data_bits": config.hbm_port_width_bits,
                "control_addr_bits": regmap(config).addr_bits}
        for name, value in want.items():
            if getattr(self, name) != value:
                raise ConfigError(f"the kernel's {name} is {getattr(self, name)}, but config "
                                  f"{config.name!r} needs {value}; rebuild the Verilog for it")
        if self.hbm_addr_bits < 33:
            raise ConfigError(f"m_axi address width {self.hbm_addr_bits} cannot reach the "
                              "platform's HBM (at least 33 bits)")

    @classmethod
    def from_verilog(cls, text: str, config: AccelConfig) -> KernelPorts:
        """The widths of module `RTL_MODULE`'s ports in `text`, checked against `config`: one
        m_axi port per HBM port, nothing more."""
        widths = {name.replace("__", "_"): bits for _, bits, name in verilog_ports(text)}

        def width(name: str) -> int:
            if name not in widths:
                raise ConfigError(f"module {RTL_MODULE} has no port {name}")
            return widths[name]

        masters = sorted({int(m.group(1)) for n in widths
                          if (m := re.match(r"m_axi_hbm(\d+)_", n))})
        if masters != list(range(config.hbm_ports)):
            raise ConfigError(f"module {RTL_MODULE} has m_axi ports {masters}; config "
                              f"{config.name!r} has hbm_ports={config.hbm_ports}")
        data = {width(f"m_axi_hbm{k}_rdata") for k in masters}
        addr = {width(f"m_axi_hbm{k}_araddr") for k in masters}
        if len(data) != 1 or len(addr) != 1:
            raise ConfigError("the m_axi ports differ in width")
        ports = cls(hbm_data_bits=data.pop(), hbm_addr_bits=addr.pop(),
                    control_addr_bits=width("s_axi_control_awaddr"),
                    ring_data_bits=width("ring_tx_tdata"), ring_user_bits=width("ring_tx_tuser"))
        if (width("ring_rx_tdata"), width("ring_rx_tuser")) != (ports.ring_data_bits,
                                                                  ports.ring_user_bits):
            raise ConfigError("ring_tx and ring_rx differ in width")
        ports.check(config)
        return ports


def verilog_ports(text: str, module: str = RTL_MODULE) -> list[tuple[str, int, str]]:
    """(input|output, bits, name) of each port of `module` in Verilog `text`, in order."""
    match = re.search(rf"^\s*module\s+{module}\s*\((.*?)^\s*endmodule\b", text, re.S | re.M)
    if not match:
        raise ConfigError(f"no module {module} in the Verilog")
    # one declaration a line: `input [7:0] a;` in the body, or `input wire [7:0] a,` in the header
    decl = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):(\d+)\]\s*)?"
                      r"(\w+)\s*[;,]?\s*$", re.M)
    return [(direction, int(hi) - int(lo) + 1 if hi else 1, name)
            for direction, hi, lo, name in decl.findall(match.group(1))]


def _hex(n: int) -> str:
    return f"0x{n:X}"


def kernel_xml(config: AccelConfig, ports: KernelPorts) -> str:
    """The kernel.xml text of a kernel built for `config` with `ports`."""
    ports.check(config)
    regs = regmap(config)
    root = ET.Element("root", versionMajor="1", versionMinor="6")
    kernel = ET.SubElement(root, "kernel", name=KERNEL_NAME, language="ip_c",
                           vlnv=f"tandem:kernel:{KERNEL_NAME}:1.0", attributes="",
                           preferredWorkGroupSizeMultiple="0", workGroupSize="1",
                           interrupt="true", hwControlProtocol="ap_ctrl_hs")
    xml_ports = ET.SubElement(kernel, "ports")
    # the control slave must span the whole map; XRT's smallest kernel range is 4 KiB
    ET.SubElement(xml_ports, "port", name="s_axi_control", mode="slave",
                  range=_hex(max(0x1000, 1 << ports.control_addr_bits)), dataWidth="32",
                  portType="addressable", base="0x0")
    for k in range(config.hbm_ports):
        ET.SubElement(xml_ports, "port", name=f"m_axi_hbm{k}", mode="master",
                      range=_hex((1 << ports.hbm_addr_bits) - 1),
                      dataWidth=str(ports.hbm_data_bits), portType="addressable", base="0x0")
    for name, mode in RING_PORTS:
        ET.SubElement(xml_ports, "port", name=name, mode=mode,
                      dataWidth=str(ports.ring_data_bits), portType="stream")
    args = ET.SubElement(kernel, "args")
    arg_id = 0
    for reg in regs.args:
        size = reg.width // 8
        pointer = reg.port is not None
        ET.SubElement(args, "arg", name=reg.name, addressQualifier="1" if pointer else "0",
                      id=str(arg_id), port=reg.port or "s_axi_control", size=_hex(size),
                      offset=_hex(reg.offset), type="void*" if pointer else "uint",
                      hostOffset="0x0", hostSize=_hex(size))
        arg_id += 1
    stream_type = f"stream<ap_axiu<{ports.ring_data_bits},{ports.ring_user_bits},0,0>>&"
    for name, _ in RING_PORTS:
        ET.SubElement(args, "arg", name=name, addressQualifier="4", id=str(arg_id), port=name,
                      size="0x0", offset="0x0", type=stream_type, hostOffset="0x0",
                      hostSize="0x0", memSize="0")
        arg_id += 1
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
