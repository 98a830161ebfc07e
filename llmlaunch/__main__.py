"""`python -m llmlaunch`: the `llmlaunch` command."""
import sys

from llmlaunch.cli import main

sys.exit(main())
