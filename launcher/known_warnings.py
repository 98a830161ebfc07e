"""Warnings every rank would print that llmlaunch has traced to their source and that do not apply
to its runs: each is hidden by its exact message and explained in docs/launch.md ("Warnings").
Anything else still prints."""
from __future__ import annotations

import warnings

# (category, message regex, why it does not apply)
KNOWN = [
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
     "DeepSpeed 0.19's comm layer (deepspeed/comm/torch.py) calls the function torch 2.13 "
     "deprecates, when ZeRO gathers updated partitions; the call still works, and the change is "
     "DeepSpeed's to make"),
]


def hide_known_warnings() -> None:
    for category, message, _why in KNOWN:
        warnings.filterwarnings("ignore", message=message, category=category)
