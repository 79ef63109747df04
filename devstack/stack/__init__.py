"""The local stack: moto as AWS, the Kling simulator as Kling, the real handlers in-process behind their triggers.

`python -m devstack.stack up|down|status` (or `klingctl stack ...`) drives it. Nothing here imports the CLI.
"""
