"""`python -m storyboard.cli`: the same as the `storyboard` command."""

from . import main

main()
