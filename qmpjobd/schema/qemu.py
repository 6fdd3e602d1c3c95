"""Declarations of QEMU's identity queries, as QEMU 7.2 x86_64 has them: target, accelerator,
QOM types and properties, machines, CPU models, TPM, command-line options, SEV and SGX.

libvirt's capability probe reads these from query-qmp-schema before it calls them, so member
names, optionality and types follow qapi/machine.json, machine-target.json, qom.json,
qdev.json, tpm.json, misc.json and misc-target.json.
"""

from __future__ import annotations

from .model import Schema

SYS_EMU_TARGETS = ["aarch64", "alpha", "arm", "avr", "cris", "hppa", "i386", "loongarch64",
                   "m68k", "microblaze", "microblazeel", "mips", "mips64", "mips64el", "mipsel",
                   "nios2", "or1k", "ppc", "ppc64", "riscv32", "riscv64", "rx", "s390x", "sh4",
                   "sh4eb", "sparc", "sparc64", "tricore", "x86_64", "xtensa", "xtensaeb"]


def declare(s: Schema) -> None:
    """Add the identity commands libvirt's capability probe sends, with their types."""
    # qapi/machine.json
    s.enum("SysEmuTarget", SYS_EMU_TARGETS)
    s.struct("TargetInfo", {"arch": "SysEmuTarget"})
    s.command("query-target", returns="TargetInfo")
    s.struct("KvmInfo", {"enabled": "bool", "present": "bool"})
    s.command("query-kvm", returns="KvmInfo")
    s.struct("MachineInfo", {"name": "str", "*alias": "str", "*is-default": "bool",
                             "cpu-max": "int", "hotpluggable-cpus": "bool",
                             "numa-mem-supported": "bool", "deprecated": "bool",
                             "*default-cpu-type": "str", "*default-ram-id": "str"})
    s.command("query-machines", returns=["MachineInfo"])

    # qapi/qom.json and qapi/qdev.json
    s.struct("ObjectPropertyInfo", {"name": "str", "type": "str", "*description": "str",
                                    "*default-value": "any"})
    s.struct("ObjectTypeInfo", {"name": "str", "*abstract": "bool", "*parent": "str"})
    s.command("qom-list-types", {"*implements": "str", "*abstract": "bool"},
              returns=["ObjectTypeInfo"])
    s.command("qom-list-properties", {"typename": "str"}, returns=["ObjectPropertyInfo"])
    s.command("device-list-properties", {"typename": "str"}, returns=["ObjectPropertyInfo"])

    # qapi/machine-target.json (x86)
    s.struct("CpuModelInfo", {"name": "str", "*props": "any"})
    s.enum("CpuModelExpansionType", ["static", "full"])
    s.struct("CpuModelExpansionInfo", {"model": "CpuModelInfo"})
    s.command("query-cpu-model-expansion",
              {"type": "CpuModelExpansionType", "model": "CpuModelInfo"},
              returns="CpuModelExpansionInfo")
    s.struct("CpuDefinitionInfo", {"name": "str", "*migration-safe": "bool", "static": "bool",
                                   "*unavailable-features": ["str"], "typename": "str",
                                   "*alias-of": "str", "deprecated": "bool"})
    s.command("query-cpu-definitions", returns=["CpuDefinitionInfo"])

    # qapi/tpm.json
    s.enum("TpmModel", ["tpm-tis", "tpm-crb", "tpm-spapr"])
    s.command("query-tpm-models", returns=["TpmModel"])
    s.enum("TpmType", ["passthrough", "emulator"])
    s.command("query-tpm-types", returns=["TpmType"])

    # qapi/misc.json
    s.enum("CommandLineParameterType", ["string", "boolean", "number", "size"])
    s.struct("CommandLineParameterInfo", {"name": "str", "type": "CommandLineParameterType",
                                          "*help": "str", "*default": "str"})
    s.struct("CommandLineOptionInfo", {"option": "str",
                                       "parameters": ["CommandLineParameterInfo"]})
    s.command("query-command-line-options", {"*option": "str"},
              returns=["CommandLineOptionInfo"])

    # qapi/misc-target.json (x86)
    s.struct("SevCapability", {"pdh": "str", "cert-chain": "str", "cpu0-id": "str",
                               "cbitpos": "int", "reduced-phys-bits": "int"})
    s.command("query-sev-capabilities", returns="SevCapability")
    s.struct("SGXEPCSection", {"node": "int", "size": "uint64"})
    s.struct("SGXInfo", {"sgx": "bool", "sgx1": "bool", "sgx2": "bool", "flc": "bool",
                         "section-size": {"type": "uint64", "features": ["deprecated"]},
                         "sections": ["SGXEPCSection"]})
    s.command("query-sgx-capabilities", returns="SGXInfo")
