"""`python -m devstack.stack up|down|status`: what `klingctl stack` runs, and what a detached stack is spawned as."""

from devstack.stack.commands import stack_group

if __name__ == "__main__":
    stack_group(prog_name="python -m devstack.stack")
