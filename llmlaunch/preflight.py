"""`python -m llmlaunch.preflight`: the preflight rank under the name llmlaunch 0.1 documented; the
entry is llmlaunch.launcher.preflight."""
from llmlaunch.launcher.entry import exit_process
from llmlaunch.launcher.preflight import main

if __name__ == "__main__":
    exit_process(main())
