"""Rich terminal rendering of records (the CLI calls these; they compute nothing)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ftbench.bench.environment import EnvironmentRecord


def _value(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:.0f}"
    return f"{value}{unit}"


def print_environment(console: Console, record: EnvironmentRecord) -> None:
    """The environment as two tables: software, then one column per GPU."""
    software = Table(title="Software", show_header=False, title_justify="left")
    software.add_column("component", style="bold")
    software.add_column("version")
    software.add_row("ftbench", f"{record.ftbench_version} (commit {record.git_commit[:12]})")
    software.add_row("driver", _value(record.driver_version))
    for name, version in record.software.items():
        software.add_row(name, version)
    software.add_row("host", f"{record.host} ({record.platform})")
    console.print(software)

    if not record.gpus:
        console.print(f"[bold yellow]{record.no_gpu_reason}[/]")
        return
    gpus = Table(title="GPUs", title_justify="left")
    gpus.add_column("", style="bold")
    for gpu in record.gpus:
        gpus.add_column(f"GPU {gpu.index}")
    rows = {
        "name": [g.name for g in record.gpus],
        "compute capability": [_value(g.compute_capability) for g in record.gpus],
        "SMs": [_value(g.sm_count) for g in record.gpus],
        "memory": [_value(g.memory_total_mib, " MiB") for g in record.gpus],
        "L2 cache": [
            "n/a" if g.l2_cache_bytes is None else f"{g.l2_cache_bytes / 2**20:.0f} MiB"
            for g in record.gpus
        ],
        "SM clock (now / max)": [
            f"{_value(g.sm_clock_mhz)} / {_value(g.sm_clock_max_mhz)} MHz" for g in record.gpus
        ],
        "memory clock (now / max)": [
            f"{_value(g.memory_clock_mhz)} / {_value(g.memory_clock_max_mhz)} MHz"
            for g in record.gpus
        ],
        "power (now / limit)": [
            f"{_value(g.power_w)} / {_value(g.power_limit_w)} W" for g in record.gpus
        ],
        "temperature": [_value(g.temperature_c, " C") for g in record.gpus],
        "clock-event reasons": [", ".join(g.throttle_reasons) or "none" for g in record.gpus],
        "other processes": [
            ", ".join(f"{p['pid']} {p['name'] or ''}".strip() for p in g.other_processes) or "none"
            for g in record.gpus
        ],
        "PCI bus id": [_value(g.pci_bus_id) for g in record.gpus],
    }
    for label, values in rows.items():
        gpus.add_row(label, *values)
    console.print(gpus)
