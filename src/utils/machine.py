"""What a measured figure needs next to it: the machine, the software versions, the load and the commit."""
import os
import platform
import subprocess


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or "unknown CPU"


def memory_gib():
    """Total memory in GiB (MemTotal of /proc/meminfo), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return int(f.readline().split()[1]) / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


def load_average():
    """The 1-minute load average, or None where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_description(load_label="load average at the end"):
    """'<cores> x <CPU>, <memory> GiB; MindSpore <version>, Python <version>, <load_label> <load>'."""
    import mindspore as ms
    memory = memory_gib()
    text = f"{os.cpu_count()} x {cpu_model()}" + (f", {memory:.0f} GiB" if memory else "")
    text += f"; MindSpore {ms.__version__}, Python {platform.python_version()}"
    load = load_average()
    return text + (f", {load_label} {load:.1f}" if load is not None and load_label else "")


def commit_of(folder="."):
    """The short hash of the checked-out commit of `folder` ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
