"""The `pipeline` command (`main`) and one module per group of subcommands.

May import every other layer; nothing imports from here.
"""
