"""The commands: the CLI and what it runs (the live controller, the demo, the tick benchmark) with the live
config file they read.
"""
