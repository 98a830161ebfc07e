"""DeepSpeed's C++/CUDA ops a run needs: prebuilt, or buildable here, checked by the preflight on
every node before the expensive start.

Which ops (launcher/ds_config.py): on GPU, DeepSpeed's AdamW is FusedAdam (`fused_adam`, a CUDA op)
and, with the optimizer offloaded, CPU Adam (`cpu_adam`, C++); on CPU the optimizer is torch's
AdamW and no op is built. An op DeepSpeed was installed with (`DS_BUILD_FUSED_ADAM=1 pip install
deepspeed`, or an image that did: deepspeed.git_version_info.installed_ops) loads at once;
otherwise DeepSpeed JIT-builds it at the first start, which needs ninja, a C++ compiler and, for a
CUDA op, nvcc (CUDA_HOME/bin or PATH). A node lacking any of them fails the start minutes in, after
every rank loaded: this check names the node and what is missing first.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

# op name -> (what it is, needs nvcc)
OPS = {"fused_adam": ("DeepSpeed's FusedAdam (CUDA)", True),
       "cpu_adam": ("DeepSpeed's CPU Adam (C++, optimizer offload)", False)}
PREBUILD = "prebuild: DS_BUILD_{}=1 pip install deepspeed (or a container image that has it)"


def needed_ops(on_gpu: bool, offload: str) -> list[str]:
    """The ops a run loads (module docstring)."""
    if not on_gpu:
        return []
    return ["cpu_adam"] if offload != "none" else ["fused_adam"]


def runs(tool: str) -> bool:
    """`tool --version` exits 0 (a wrapper script left by a removed toolkit does not)."""
    import subprocess

    try:
        return subprocess.run([tool, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_tools(environ=os.environ) -> dict[str, str | None]:
    """Where the JIT build's tools are on this node (None: missing)."""
    cuda_home = environ.get("CUDA_HOME") or environ.get("CUDA_PATH") or ""
    nvcc = str(Path(cuda_home, "bin", "nvcc")) if cuda_home and Path(cuda_home, "bin", "nvcc").is_file() \
        else shutil.which("nvcc")
    nvcc = nvcc if nvcc and runs(nvcc) else None
    try:
        import ninja  # noqa: F401  (the pip package puts the binary beside it)
        ninja_path = shutil.which("ninja") or "python package ninja"
    except ImportError:
        ninja_path = shutil.which("ninja")
    return {"ninja": ninja_path, "c++ compiler": shutil.which(environ.get("CXX", "c++")),
            "nvcc": nvcc}


def ops_verdict(needed: list[str], installed: dict, tools: dict, host: str) -> tuple[bool, str]:
    """(ok, detail) for the ops `needed` given DeepSpeed's installed_ops and the build tools found."""
    if not needed:
        return True, "none needed (torch's AdamW on CPU)"
    ready, problems = [], []
    for op in needed:
        what, cuda = OPS[op]
        if installed.get(op):
            ready.append(f"{op} prebuilt")
            continue
        missing = [name for name in ("ninja", "c++ compiler") + (("nvcc",) if cuda else ())
                   if not tools.get(name)]
        if missing:
            problems.append(f"{op} ({what}) is not prebuilt and cannot be built on {host}: missing "
                            f"{', '.join(missing)}; {PREBUILD.format(op.upper())}")
        else:
            ready.append(f"{op} JIT-built at the first start (ninja, c++{', nvcc' if cuda else ''} "
                         "found)")
    return not problems, "; ".join(problems or ready)


def deepspeed_ops_check(on_gpu: bool, offload: str, host: str) -> tuple[bool, str]:
    """(ok, detail) of the preflight's check on this node."""
    needed = needed_ops(on_gpu, offload)
    installed = {}
    if needed:
        try:
            from deepspeed.git_version_info import installed_ops as installed
        except ImportError:
            installed = {}
    return ops_verdict(needed, installed, build_tools() if needed else {}, host)
