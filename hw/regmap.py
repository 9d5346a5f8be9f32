"""The kernel's AXI4-Lite register map: the one description both the RTL control slave
(`rtl.control`) and the host driver read.

The layout follows the XRT `ap_ctrl_hs` convention for kernels driven through
`xrt::kernel` / PYNQ: a control word at 0x00 (ap_start, ap_done, ap_idle, ap_ready,
auto_restart), the global and per-source interrupt enables at 0x04 / 0x08, the interrupt status
at 0x0C (write 1 to toggle a bit), then the kernel arguments from 0x10, each in its own 8-byte
slot (64-bit pointers whole, 32-bit scalars in the low half). Every HBM port of the config gets a
pointer argument `hbm<k>` (the base address of the buffer bound to that pseudo-channel); the
program pointer is read through port 0. Read-only status registers follow the arguments.

Host code asks for registers and arguments by name (`regmap(config)["hbm3"].offset`); nothing
outside this module writes an offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import AccelConfig

#: The Verilog module of one device's kernel, as the RTL build writes it and every simulation
#: top and board wrapper instantiates it.
KERNEL_MODULE = "tandem_kernel"
#: The board kernel XRT knows: the Vitis wrapper module, the .xo and its compute units.
XRT_KERNEL = "tandem"

__all__ = [
    "ARG_BASE",
    "CONTROL_BITS",
    "KERNEL_MODULE",
    "XRT_KERNEL",
    "Field",
    "RegMap",
    "Register",
    "regmap",
]

#: Offset of the first kernel argument (XRT convention).
ARG_BASE = 0x10
#: Bits of the control register at 0x00 (UG1393, ap_ctrl_hs).
CONTROL_BITS = {"ap_start": 0, "ap_done": 1, "ap_idle": 2, "ap_ready": 3, "auto_restart": 7}


@dataclass(frozen=True)
class Field:
    """A named bit range of a register."""

    name: str
    lsb: int
    width: int = 1
    access: str = "rw"  #: rw | ro | w1s (write 1 sets, self-clearing) | cor (clear on read)
    #: | tow (write 1 toggles)
    doc: str = ""


@dataclass(frozen=True)
class Register:
    """One 32-bit word of the map, or the low word of a 64-bit argument (`width` 64 takes
    `offset` and `offset + 4`)."""

    name: str
    offset: int
    width: int = 32  #: 32 or 64 bits
    access: str = "rw"  #: rw | ro, for registers without fields
    kind: str = "control"  #: control | arg | status
    fields: tuple[Field, ...] = ()
    #: for pointer arguments: the m_axi port they are read through (`m_axi_hbm<k>`)
    port: str | None = None
    doc: str = ""

    @property
    def words(self) -> int:
        return self.width // 32


@dataclass(frozen=True)
class RegMap:
    """The map of one kernel build; iterate for registers in offset order."""

    registers: tuple[Register, ...]
    ports: int  #: m_axi ports (HBM pseudo-channels)
    addr_bits: int  #: AXI4-Lite address width that spans the map
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for reg in self.registers:
            self._index[reg.name] = reg

    def __getitem__(self, name: str) -> Register:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no register {name!r} in the kernel's map; registers: "
                           f"{', '.join(self._index)}") from None

    def __iter__(self):
        return iter(self.registers)

    def __len__(self) -> int:
        return len(self.registers)

    @property
    def args(self) -> list[Register]:
        return [r for r in self.registers if r.kind == "arg"]

    @property
    def hbm_args(self) -> list[Register]:
        return [self[f"hbm{k}"] for k in range(self.ports)]

    @property
    def size(self) -> int:
        """Bytes the map spans."""
        last = self.registers[-1]
        return last.offset + 4 * last.words

    def to_dict(self) -> dict:
        """JSON-ready form for tools that are not Python (kernel.xml generation, C drivers)."""
        return {
            "ports": self.ports,
            "addr_bits": self.addr_bits,
            "registers": [
                {"name": r.name, "offset": r.offset, "width": r.width, "access": r.access,
                 "kind": r.kind, "port": r.port, "doc": r.doc,
                 "fields": [{"name": f.name, "lsb": f.lsb, "width": f.width,
                             "access": f.access, "doc": f.doc} for f in r.fields]}
                for r in self.registers
            ],
        }


def _control_registers() -> list[Register]:
    bits = CONTROL_BITS
    return [
        Register("control", 0x00, fields=(
            Field("ap_start", bits["ap_start"], access="w1s",
                  doc="start the kernel; reads 1 until the kernel has taken the start"),
            Field("ap_done", bits["ap_done"], access="cor",
                  doc="the run finished (HALT and every unit idle); cleared when read"),
            Field("ap_idle", bits["ap_idle"], access="ro", doc="no run in progress"),
            Field("ap_ready", bits["ap_ready"], access="cor",
                  doc="ready for new arguments (with ap_done for this kernel)"),
            Field("auto_restart", bits["auto_restart"], doc="start again after each run"),
        ), doc="XRT ap_ctrl_hs control word"),
        Register("gie", 0x04, fields=(Field("enable", 0, doc="global interrupt enable"),)),
        Register("ier", 0x08, fields=(Field("done", 0, doc="interrupt on ap_done"),
                                      Field("ready", 1, doc="interrupt on ap_ready"))),
        Register("isr", 0x0C, fields=(Field("done", 0, access="tow"),
                                      Field("ready", 1, access="tow"))),
    ]


def regmap(config: AccelConfig) -> RegMap:
    """The register map of a kernel built for `config` (its HBM port count)."""
    regs = _control_registers()
    offset = ARG_BASE

    def arg(name: str, width: int, doc: str, port: str | None = None) -> None:
        nonlocal offset
        regs.append(Register(name, offset, width, "rw", "arg", port=port, doc=doc))
        offset += 8  # every argument owns an 8-byte slot

    arg("program", 64, "address of the instruction words (256 bits each), read through "
        "m_axi_hbm0", port="m_axi_hbm0")
    arg("program_words", 32, "instructions to load into the instruction memory")
    arg("device", 32, "this FPGA's position in the ring, 0..devices-1")
    arg("devices", 32, "FPGAs in the ring")
    for k in range(config.hbm_ports):
        arg(f"hbm{k}", 64, f"base address of the buffer in HBM pseudo-channel {k}; every "
            "channel offset the program uses is relative to it", port=f"m_axi_hbm{k}")
    regs.append(Register("cycles", offset, 64, "ro", "status",
                         doc="kernel cycles of the last run, from ap_start to ap_done"))
    offset += 8
    regs.append(Register("fault", offset, 32, "ro", "status", fields=(
        Field("code", 0, 8, "ro", doc="0: none; see rtl.core.FAULTS"),
        Field("pc", 8, 16, "ro", doc="instruction index of the fault"),
    ), doc="why the last run stopped early, if it did"))
    offset += 8
    addr_bits = max(8, (offset - 1).bit_length())
    return RegMap(tuple(regs), config.hbm_ports, addr_bits)
