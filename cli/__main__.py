"""`python -m cli`: the `dfdc` command."""

from cli.app import main

main()
