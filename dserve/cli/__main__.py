"""``python -m dserve.cli``: the ``dserve`` command."""
from dserve.cli import cli

if __name__ == "__main__":
    cli(prog_name="dserve")
