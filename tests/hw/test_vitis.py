"""The Vitis board build (hw.vitis): Vitis cannot run here, so the generated kernel.xml, link
config and scripts are validated structurally against the register map, the config and the
kernel's own Verilog ports."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring

from hw.config import PRESETS, ConfigError
from hw.regmap import regmap
from hw.vitis import (
    KERNEL_NAME,
    PLATFORMS,
    RTL_MODULE,
    KernelPorts,
    RingLink,
    connectivity_cfg,
    kernel_xml,
    vitis_wrapper,
    write_build,
)
from hw.vitis.__main__ import main as vitis_main
from hw.vitis.kernel_xml import verilog_ports
from rtl import build as rtl_build
from rtl.kernel import Kernel
from rtl.verilog import to_verilog

BOARDS = ["u280", "u55c"]


class _Shell(wiring.Component):
    """The kernel top's ports with nothing inside but one register (so that, like the kernel,
    it has Amaranth's clk and rst): its Verilog has Kernel's port list exactly, in seconds
    instead of the minutes the whole core takes to convert."""

    def elaborate(self, platform):
        m = Module()
        toggle = Signal()
        m.d.sync += toggle.eq(~toggle)
        return m


def _kernel_verilog(config) -> str:
    kernel = Kernel(config)
    kernel._MustUse__silence = True  # only its signature is wanted, never its logic
    return to_verilog(_Shell(kernel.signature), RTL_MODULE)


@pytest.fixture(scope="module", params=BOARDS)
def board(request):
    config = PRESETS[request.param]
    verilog = _kernel_verilog(config)
    return config, KernelPorts.from_verilog(verilog, config), verilog


def test_the_wrapped_module_is_the_one_the_rtl_build_writes():
    assert rtl_build.KERNEL == RTL_MODULE


def _hex(text: str) -> int:
    return int(text, 16)


def test_ports_from_verilog_match_the_config(board):
    config, ports, _ = board
    assert ports.hbm_data_bits == config.hbm_port_width_bits
    assert ports.hbm_addr_bits == 64
    assert ports.control_addr_bits == regmap(config).addr_bits
    assert ports.ring_user_bits > 0


def test_kernel_xml_args_are_the_register_map(board):
    config, ports, _ = board
    root = ET.fromstring(kernel_xml(config, ports))
    kernel = root.find("kernel")
    assert kernel.get("name") == KERNEL_NAME
    assert kernel.get("hwControlProtocol") == "ap_ctrl_hs"
    xml_ports = {p.get("name"): p for p in kernel.find("ports")}
    args = list(kernel.find("args"))
    assert [int(a.get("id")) for a in args] == list(range(len(args)))
    regs = regmap(config)
    by_name = {a.get("name"): a for a in args}
    for reg in regs.args:  # every argument at the map's offset and width, on its port
        arg = by_name.pop(reg.name)
        assert _hex(arg.get("offset")) == reg.offset
        assert _hex(arg.get("size")) * 8 == reg.width
        assert _hex(arg.get("hostSize")) * 8 == reg.width
        if reg.port is not None:
            assert arg.get("addressQualifier") == "1"
            assert arg.get("port") == reg.port
        else:
            assert arg.get("addressQualifier") == "0"
            assert arg.get("port") == "s_axi_control"
        assert arg.get("port") in xml_ports
    # what is left are the ring's streams, which take no register
    assert sorted(by_name) == ["ring_rx", "ring_tx"]
    for name, arg in by_name.items():
        assert arg.get("addressQualifier") == "4"
        assert xml_ports[name].get("portType") == "stream"
        assert int(xml_ports[name].get("dataWidth")) == ports.ring_data_bits
    # the control slave spans the whole map, status registers included
    control = xml_ports["s_axi_control"]
    assert control.get("mode") == "slave"
    assert _hex(control.get("range")) >= regs.size
    assert regs["cycles"].offset + 8 <= _hex(control.get("range"))
    # no two arguments share a register word
    words = [w for a in regs.args for w in range(a.offset, a.offset + a.width // 8, 4)]
    assert len(words) == len(set(words))


def test_kernel_xml_has_one_master_per_hbm_port(board):
    config, ports, _ = board
    kernel = ET.fromstring(kernel_xml(config, ports)).find("kernel")
    masters = {p.get("name"): p for p in kernel.find("ports") if p.get("mode") == "master"}
    assert sorted(masters) == sorted(f"m_axi_hbm{k}" for k in range(config.hbm_ports))
    for port in masters.values():
        assert int(port.get("dataWidth")) == config.hbm_port_width_bits
        assert _hex(port.get("range")) == 2**64 - 1


def _sp_lines(text: str) -> dict[str, str]:
    sp = {}
    for line in text.splitlines():
        if line.startswith("sp="):
            port, bank = line[3:].split(":")
            assert port not in sp, f"{port} mapped twice"
            sp[port] = bank
    return sp


@pytest.mark.parametrize("name", BOARDS)
def test_link_config_puts_every_port_on_its_own_bank(name):
    config = PRESETS[name]
    text = connectivity_cfg(config)
    assert "[connectivity]" in text.splitlines()
    assert f"nk={KERNEL_NAME}:1:{KERNEL_NAME}_1" in text.splitlines()
    sp = _sp_lines(text)
    assert sorted(sp) == sorted(f"{KERNEL_NAME}_1.m_axi_hbm{k}" for k in range(config.hbm_ports))
    banks = []
    for port, bank in sp.items():
        k = int(re.fullmatch(rf"{KERNEL_NAME}_1\.m_axi_hbm(\d+)", port).group(1))
        match = re.fullmatch(r"HBM\[(\d+)\]", bank)
        assert match, bank
        assert int(match.group(1)) == k  # the layout stripes channel k onto port k
        assert 0 <= int(match.group(1)) < PLATFORMS[name].hbm_banks
        banks.append(bank)
    assert len(set(banks)) == len(banks)
    # a single card: the ring closes on itself
    assert f"stream_connect={KERNEL_NAME}_1.ring_tx:{KERNEL_NAME}_1.ring_rx" in text


def test_a_multi_card_ring_goes_through_the_link_kernel():
    link = RingLink.parse("qsfp_link:s_axis_tx:m_axis_rx:/opt/xo/qsfp_link.xo")
    text = connectivity_cfg(PRESETS["u280"], devices=4, ring_link=link)
    assert f"stream_connect={KERNEL_NAME}_1.ring_tx:qsfp_link_1.s_axis_tx" in text
    assert f"stream_connect=qsfp_link_1.m_axis_rx:{KERNEL_NAME}_1.ring_rx" in text
    assert "ring_tx:tandem_kernel_1.ring_rx" not in text
    with pytest.raises(ConfigError, match="needs a QSFP28 link kernel"):
        connectivity_cfg(PRESETS["u280"], devices=2)
    with pytest.raises(ConfigError, match="KERNEL:TX_PORT:RX_PORT:XO_PATH"):
        RingLink.parse("qsfp_link:tx")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "tiny"}, "no Vitis platform for config 'tiny'"),
        ({"hbm_ports": 64, "mpu_lanes": 64}, "has 32 HBM banks"),
        ({"hbm_channel_bytes": 2**30}, "bank holds"),
    ],
)
def test_configs_no_platform_builds_are_refused(change, message):
    config = dataclasses.replace(PRESETS["u280"], **change)
    with pytest.raises(ConfigError, match=message):
        connectivity_cfg(config)


def test_verilog_that_does_not_match_the_config_is_refused():
    u280 = PRESETS["u280"]
    text = _kernel_verilog(u280)
    with pytest.raises(ConfigError, match=r"hbm_ports=16"):
        KernelPorts.from_verilog(text, dataclasses.replace(u280, hbm_ports=16, mpu_lanes=32))
    with pytest.raises(ConfigError, match="no module tandem_kernel"):
        KernelPorts.from_verilog(text.replace("module tandem_kernel", "module other"), u280)
    with pytest.raises(ConfigError, match="no port ring_tx_tuser"):
        KernelPorts.from_verilog(re.sub(r"ring_tx__tuser", "ring_tx__tkeep", text), u280)


def test_wrapper_gives_vitis_its_names_and_compiles(tmp_path, board):
    config, _, verilog = board
    inner = verilog_ports(verilog)
    wrapper = vitis_wrapper(verilog)
    outer = verilog_ports(wrapper, KERNEL_NAME)
    names = [name for _, _, name in outer]
    assert names[:2] == ["ap_clk", "ap_rst_n"]
    # every port but clk, rst and the traces, with its direction and width, single underscores
    want = [(d, b, n.replace("__", "_")) for d, b, n in inner
            if n not in ("clk", "rst") and not n.startswith("trace_")]
    assert outer[2:] == want
    assert not any("__" in n or n.startswith("trace_") for n in names)
    for k in range(config.hbm_ports):
        assert f"m_axi_hbm{k}_araddr" in names
    for bus in ("s_axi_control_awaddr", "ring_tx_tdata", "ring_rx_tuser", "interrupt"):
        assert bus in names
    # every inner port is connected by name, exactly once
    connected = re.findall(r"^\s*\.(\w+)\(", wrapper, re.M)
    assert sorted(connected) == sorted(n for _, _, n in inner)
    if shutil.which("iverilog"):  # and it is Verilog a tool accepts, around that module
        (tmp_path / "inner.v").write_text(verilog)
        (tmp_path / "wrapper.v").write_text(wrapper)
        subprocess.run(["iverilog", "-g2012", "-s", KERNEL_NAME, "-o", str(tmp_path / "a.out"),
                        str(tmp_path / "inner.v"), str(tmp_path / "wrapper.v")], check=True)


def test_build_directory_scripts(tmp_path, board):
    config, _, verilog = board
    platform = PLATFORMS[config.name]
    written = write_build(config, tmp_path, verilog=verilog)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        "config.json", "link.cfg", "package_kernel.tcl", "build.sh", "kernel.xml",
        f"hdl/{KERNEL_NAME}.v"}
    script = (tmp_path / "build.sh").read_text()
    assert f'PLATFORM="${{PLATFORM:-{platform.name}}}"' in script
    assert f"--kernel_frequency {config.clock_mhz:g}" in script
    assert '--config "$HERE/link.cfg"' in script
    assert "package_kernel.tcl" in script
    assert 'tandem rtl build --config "$HERE/config.json" --out "$HERE/hdl"' in script
    assert f'--verilog "$HERE/hdl/{RTL_MODULE}.v"' in script
    other = next(p.name for n, p in PLATFORMS.items() if n != config.name)
    assert other not in script
    assert (tmp_path / "build.sh").stat().st_mode & 0o111
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(tmp_path / "build.sh")], check=True)
    tcl = (tmp_path / "package_kernel.tcl").read_text()
    assert f"-kernel_name {KERNEL_NAME}" in tcl
    assert f"set_property top {KERNEL_NAME} " in tcl
    assert f"{RTL_MODULE}.v" in tcl
    assert "-kernel_xml $kernel_xml" in tcl
    for k in range(config.hbm_ports):  # every master on the kernel clock
        assert re.search(rf"ASSOCIATED_BUSIF.*\bm_axi_hbm{k}\b", tcl.replace("\n", " "))
    if shutil.which("tclsh"):  # well-formed Tcl (balanced braces, complete commands)
        probe = "set f [open [lindex $argv 0]]; set t [read $f]; " \
                "if {![info complete $t]} {exit 1}"
        subprocess.run(["tclsh"], input=probe.replace("[lindex $argv 0]",
                                                      f"{{{tmp_path / 'package_kernel.tcl'}}}"),
                       text=True, check=True)
    # the config the build script hands the RTL build is the one asked for
    assert PRESETS[config.name].to_json() == (tmp_path / "config.json").read_text()


def test_cli_writes_the_build_and_refuses_bad_input(tmp_path, capsys):
    verilog = tmp_path / "tandem_kernel.v"
    verilog.write_text(_kernel_verilog(PRESETS["u55c"]))
    out = tmp_path / "build"
    assert vitis_main(["--config", "u55c", "--verilog", str(verilog), "--out", str(out)]) == 0
    kernel = ET.parse(out / "kernel.xml").getroot().find("kernel")
    assert len([p for p in kernel.find("ports") if p.get("mode") == "master"]) == 32
    assert "xilinx_u55c_gen3x16_xdma_3_202210_1" in (out / "build.sh").read_text()
    capsys.readouterr()
    for argv, message in [
        (["--config", "tiny"], "no Vitis platform"),
        (["--config", "u280", "--devices", "2"], "needs a QSFP28 link kernel"),
        (["--config", "u280", "--verilog", str(tmp_path / "none.v")], "run the RTL build"),
        (["--config", "u280", "--devices", "2", "--ring-link", "x"], "KERNEL:TX_PORT"),
    ]:
        assert vitis_main([*argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert re.search(message, err[0])
