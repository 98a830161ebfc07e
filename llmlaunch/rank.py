"""`python -m llmlaunch.rank`: the training rank under the name llmlaunch 0.1 documented (scripts
that start ranks themselves use it); the entry is llmlaunch.launcher.rank."""
from llmlaunch.launcher.entry import exit_process
from llmlaunch.launcher.rank import main

if __name__ == "__main__":
    exit_process(main())
